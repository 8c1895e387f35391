"""``python -m magicseg_models.config > docs/configuration.md``: print the configuration reference."""

from magicseg_models.config.reference import configuration_doc

print(configuration_doc(), end="")
