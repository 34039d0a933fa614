"""Azure OpenAI: the OpenAI wire format at deployment URLs, with `api-version` and an `api-key` header.

`base_url` is the resource endpoint (`https://<resource>.openai.azure.com`); the upstream model
name of a route is the deployment name. Bodies pass through as for OpenAI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from sluicegate.providers.base import Preset, register_provider_type
from sluicegate.providers.openai import PATHS, OpenAIProvider

if TYPE_CHECKING:
    from sluicegate.config.model import ProviderConfig


class AzureOptions(BaseModel):
    """`options:` of an `azure_openai` provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the data-plane API version every call names
    api_version: str = Field("2024-10-21", min_length=1, pattern=r"^[0-9a-z.-]+$")


class AzureOpenAIProvider(OpenAIProvider):
    """An Azure OpenAI resource; one deployment per route."""

    Options = AzureOptions

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self.options = AzureOptions.model_validate(config.options)
        self._deployment_urls: dict[tuple[str, str], str] = {}

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        key = (endpoint, model)
        url = self._deployment_urls.get(key)
        if url is None:
            deployment = quote(model, safe="")
            path = f"openai/deployments/{deployment}/{PATHS[endpoint]}"
            url = f"{self.base_url}/{path}?api-version={self.options.api_version}"
            self._deployment_urls[key] = url
        return url

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "api-key", secret


register_provider_type(
    "azure_openai",
    AzureOpenAIProvider,
    Preset(None, docs="https://learn.microsoft.com/azure/ai-services/openai/reference"),
)
