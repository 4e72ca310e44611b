"""One line of an error's message, for the one-line errors of the commands."""


def first_line(error: Exception, limit: int = 160) -> str:
  """The start of an error's message (TF's can be thousands of characters), one line."""
  text = " ".join(str(getattr(error, "message", None) or error).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."
