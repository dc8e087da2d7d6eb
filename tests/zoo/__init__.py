"""A zoo of spiking models written the way the field writes them, for the frontend tests: spikingjelly
classifiers over sequences (:mod:`.classifiers`) and a UNet in the SDDPM/SDM papers' style
(:mod:`.papers_unet`)."""
