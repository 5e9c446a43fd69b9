# Example override for BlissDeblendMeasureTask: read the newer `visit_image` dataset instead of
# `calexp`, accept exposures slightly outside the model's PSF range with a logged warning, and
# keep memory low on shared batch nodes.
config.connections.calexp = "visit_image"
config.inference.out_of_range = "flag"
config.inference.psf_fwhm_margin_arcsec = 0.1
config.inference.memory_budget_gb = 0.5
config.inference.device = "cpu"
