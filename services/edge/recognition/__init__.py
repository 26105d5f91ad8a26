"""Plate detection and reading: pure pre/post-processing plus one OpenVINO adapter."""
