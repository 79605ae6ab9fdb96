"""An HTTPS emulator of the Azure services meshflow uses, for the real, unmodified Azure SDKs.

It serves Entra ID client-credential tokens, the Key Vault data plane (secrets, certificates,
keys with sign/verify) and a slice of ARM (AKS, Application Gateway, public IPs, managed
identities, role assignments, Key Vault access policies) on one port, over TLS signed by a CA it
generates at first start in its state folder. Its state is kept in memory and saved to
``<state_dir>/vault-state.json`` (0600), so a restart on the same folder and port serves the same
vault, resources, clients and tokens under the same CA (see :mod:`.persistence`). Run it
in-process (:class:`AzureEmulator`) or as a process (``python -m sandbox.azure --state-dir DIR``;
see :mod:`sandbox.azure.__main__`).

Client recipe (``url`` = ``emulator.url`` = ``https://127.0.0.1:PORT``, ``ca`` =
``str(emulator.ca_bundle)``, ``tenant`` = ``emulator.tenant_id``; ``client_id``/``secret``
registered first with ``register_client`` or the config's ``clients``, as an app registration
must exist in Entra)::

    credential = ClientSecretCredential(tenant, client_id, secret, authority=url,
                                        disable_instance_discovery=True, connection_verify=ca)
    SecretClient(url, credential, connection_verify=ca)  # same for CertificateClient, KeyClient
    CryptographyClient(key, credential, connection_verify=ca)    # key: a KeyVaultKey or its id
    ContainerServiceClient(credential, subscription, base_url=url, connection_verify=ca)
    # ... and likewise NetworkManagementClient, ManagedServiceIdentityClient,
    # AuthorizationManagementClient, KeyVaultManagementClient.

Why each piece is needed:

* ``connection_verify=ca`` is azure-core's per-client TLS setting: every client (and the
  credential, whose MSAL HTTP calls go through azure-identity's own azure-core pipeline) passes
  it to its ``RequestsTransport`` as requests' ``verify``. An explicit path beats the
  ``REQUESTS_CA_BUNDLE`` environment variable, so no process-global setting is needed (setting
  ``REQUESTS_CA_BUNDLE=ca`` instead also works, but then public CAs are no longer trusted).
* ``disable_instance_discovery=True`` is required: otherwise MSAL validates the unknown
  authority against ``https://login.microsoftonline.com/common/discovery/instance`` first.
  With it, MSAL goes straight to ``{url}/{tenant}/v2.0/.well-known/openid-configuration``.
* The tenant must be ``emulator.tenant_id``: Key Vault's 401 challenge names that tenant and
  azure-identity refuses tokens for another tenant; the token endpoint knows only that tenant.
* The vault URL must be the ``127.0.0.1`` form: the challenge's ``resource`` is the parent
  domain of the vault host (``https://0.0.1:PORT``, as ``https://vault.azure.net`` is for
  ``x.vault.azure.net``), which the SDK's default ``verify_challenge_resource`` check accepts.
  With ``https://localhost:PORT`` pass ``verify_challenge_resource=False``.
* ARM clients keep their default ``credential_scopes``; token audiences are not checked.

Key Vault: one vault per emulator, keyed by host, not by path. A prefix such as
``/vaults/<name>`` in ``vault_url`` would reach the server, but the SDK parses each returned id
with ``parse_key_vault_id``, which only accepts ``/{collection}/{name}[/{version}]``; so ids
cannot carry a vault name. ARM ``vaults`` resources all report this vault as ``vaultUri``.

Long-running operations poll fast without client changes: ARM async operations send
``Retry-After-Ms`` (azure-core honours it). Key Vault certificate creation is polled by the SDK
every 5 s (not controlled by the server); set ``pending_polls=0`` for an immediately completed
operation, or pass the SDK's ``_polling_interval`` in tests.
"""

from .emulator import DEFAULT_TENANT, AzureEmulator
from .persistence import STATE_FILE, StateFileError

__all__ = ["DEFAULT_TENANT", "STATE_FILE", "AzureEmulator", "StateFileError"]
