# Example override for BlissDeblendMeasureTask (label blissDeblendMeasure): a more complete,
# less pure catalog and more posterior samples, e.g. for blending studies.
#   pipetask run ... -p pipelines/BlissDRP.yaml -C blissDeblendMeasure:config/blissDeblendMeasure_lowThreshold.py
config.detection_threshold = 0.3
config.n_samples = 64
