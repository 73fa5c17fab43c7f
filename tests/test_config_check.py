import pytest
from omegaconf import OmegaConf

from aigc_lab.errors import ConfigError
from aigc_lab.utils.config_check import check_targets


def _cfg(**node):
    return OmegaConf.create({"model": {"_target_": "aigc_lab.models.gan.GANConfig", **node}})


def test_accepts_valid_nodes():
    check_targets(_cfg(latent_dim=8, spectral_norm=False))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"latent_dimm": 8}, "model.latent_dimm: unknown key"),
        ({"latent_dim": "eight"}, "model.latent_dim: expected int"),
        ({"latent_dim": 8.5}, "model.latent_dim: expected int"),
        ({"spectral_norm": "yes"}, "model.spectral_norm: expected bool"),
    ],
)
def test_rejects_typos_and_types(node, message):
    with pytest.raises(ConfigError, match=message):
        check_targets(_cfg(**node))


def test_unimportable_target():
    with pytest.raises(ConfigError, match="cannot import"):
        check_targets(OmegaConf.create({"x": {"_target_": "aigc_lab.nope.Nothing"}}))
