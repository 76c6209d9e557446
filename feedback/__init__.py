"""Feedback: users telling the system that an image is ai or real."""
