"""Data-reweighting methods: the interface the trainer calls (``base``) and the baselines."""
