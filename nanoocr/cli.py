"""The `nanoocr` command. Each subcommand's arguments and body live in the module that owns it."""

import argparse
import importlib
import sys

# subcommand -> (module, help); the module provides add_args(parser) and main(args) -> exit code
COMMANDS = {
    "ocr": ("nanoocr.ocr", "read images, PDFs and folders into text/markdown"),
    "serve": ("nanoocr.web.app", "run the web app and JSON API"),
    "eval": ("nanoocr.evaluate", "score a model on a JSONL manifest or a benchmark folder"),
    "import-weights": ("nanoocr.weights", "assemble a model folder from SAM/CLIP/nanochat/DeepSeek-OCR weights"),
    "synth": ("nanoocr.synth", "write a synthetic document dataset (PNG + JSONL)"),
    "bench": ("nanoocr.bench", "measure encoder, training and generation speed"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nanoocr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)  # -h goes on to the command's own parser
        p.set_defaults(_module=module)
    # parse the command name first so only that command's module (and its imports) is loaded
    args, rest = parser.parse_known_args(argv)
    mod = importlib.import_module(args._module)
    p = argparse.ArgumentParser(prog=f"nanoocr {args.command}", description=COMMANDS[args.command][1])
    mod.add_args(p)
    return mod.main(p.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
