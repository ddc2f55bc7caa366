"""The email proxy: buffered sends over SMTP (``smtp.py``) and the ``email.*`` capabilities."""
