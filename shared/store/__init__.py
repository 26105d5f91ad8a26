"""The one relational schema: written by the correlator, read and edited by the API."""
