"""Frozen image encoders: the factory (:func:`create_encoder`), EfficientNet-Lite and open_clip trunks."""
