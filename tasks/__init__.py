"""Prefect tasks: thin wrappers over latentda that check inputs, call one library function, return references."""
