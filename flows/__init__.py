"""Prefect flows: thin orchestration over model/, feedback/ and the registry."""
