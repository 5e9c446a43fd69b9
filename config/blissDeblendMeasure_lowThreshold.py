# Example override for BlissDeblendMeasureTask (label blissDeblendMeasure): a more complete,
# less pure catalog and more posterior samples, e.g. for blending studies.
#   pipetask run ... -p pipelines/BlissDRP.yaml -C blissDeblendMeasure:config/blissDeblendMeasure_lowThreshold.py
config.inference.detection_threshold = 0.3
config.inference.n_samples = 64
