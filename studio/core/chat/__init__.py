"""What the chat and the side-by-side comparison keep: the SQLite records and the ratings from votes."""
