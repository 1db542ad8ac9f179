"""Data curation (`osl-curate`, docs/curation.md): stages that score clips and drop those out of bounds,
scaled out over work units, writing the shards `osl-data` writes plus an index of every score."""
