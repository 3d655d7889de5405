"""chatforge: an open, self-hostable ChatGPT system — data, tokenizer, pre-training, SFT, RLHF, serving.

Each pipeline stage is one module and one `chatforge` subcommand working over a run directory
(see ../shared/DESIGN.md and README.md).
"""

__version__ = "0.1.0"


class ChatforgeError(Exception):
    """An error the user caused (bad path, bad data, bad flag). The CLI prints it without a traceback."""
