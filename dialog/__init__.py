"""The dialog: what was said, asked, clicked and decided in one search, and how it becomes a
query. Plain data; it knows nothing of models."""

from dialog.query import REFORMULATIONS, chatir_query, get_reformulation
from dialog.state import MAX_MESSAGE_CHARS, Click, DialogState, Outcome, Turn, check_message

__all__ = ["MAX_MESSAGE_CHARS", "REFORMULATIONS", "Click", "DialogState", "Outcome", "Turn",
           "chatir_query", "check_message", "get_reformulation"]
