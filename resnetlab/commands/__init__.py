"""CLI subcommands, one module each; see `resnetlab.cli.COMMANDS`."""

# --amp for the commands that run a trained model (predict, eval, serve).
INFERENCE_AMP_HELP = (
    "autocast (default auto: bf16 on a CPU with native bf16 and on CUDA, scores usually within a few hundredths of"
    " fp32's, more on a barely trained model; off: fp32, as an exported ONNX file runs)"
)
