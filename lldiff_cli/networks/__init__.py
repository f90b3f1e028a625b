"""The networks of lldiff: plain nn.Modules with keyword-only arguments, no config, no device logic."""

from lldiff_cli.networks.anchor import AnchorNet
from lldiff_cli.networks.exposure import ExposureEnsemble, ExposureMap, ExposureNet, estimators, exposure_estimator
from lldiff_cli.networks.hfrm import HFRM
from lldiff_cli.networks.refiner import Refiner
from lldiff_cli.networks.unet import UNet

__all__ = ["UNet", "HFRM", "AnchorNet", "ExposureNet", "ExposureMap", "ExposureEnsemble", "exposure_estimator", "estimators", "Refiner"]
