"""Adapters to other libraries; each imports its library lazily and says which extra to install when it is
missing (``taylorshift.integrations.hf``: Hugging Face ``transformers``, extra ``hf``)."""
