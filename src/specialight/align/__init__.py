"""Tokenizer alignment (the paper's dynamic program; exact offsets) and teacher-to-student projection."""
