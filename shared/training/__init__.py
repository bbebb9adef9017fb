"""Training, framework-free: the trainer contract and optimizer settings (``trainer``), the
loop behind ``rosetta train`` (``loop``), resumable state (``resume``) and the data (``data``)."""
