"""Getting documents in: files and folders found, their text extracted, kept in sync with the collection."""
