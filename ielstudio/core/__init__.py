"""Headless engine of IEL Studio: numpy + torch only, never Qt."""
