"""Coordinator side: build, convert and check trainable TFLite models (needs TensorFlow).

``model_export.registry`` (the architectures by name) imports no TensorFlow, so command
lines and job-file checks read it cheaply; the other modules import TensorFlow through
``model_export._tf``, which silences its C++ start-up chatter (EDGEFL_TF_LOGS=1 shows it).
"""
