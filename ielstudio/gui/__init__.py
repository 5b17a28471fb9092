"""Qt user interface of IEL Studio (imported lazily: headless runs never load Qt)."""
