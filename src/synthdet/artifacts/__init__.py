"""Typed files one stage hands the next: each a frozen dataclass with its file name and its
read, (atomic) write and verify in one module, the JSON on disk unchanged."""
