"""Integrations with other training libraries; each module imports its library on import
(``from dro_rebel.integrations.trl import DRODPOTrainer``)."""
