# Example override for BlissTrainTask (label blissTrain): match the simulations to the calexps
# selected by -i / -d (pixel scale, PSF FWHM range padded by 0.05", sky noise).
#   pipetask run ... -p pipelines/BlissTrain.yaml -C blissTrain:config/blissTrain_fromCalexps.py
config.use_calexp_conditions = True
config.psf_fwhm_padding_arcsec = 0.05
