"""ARM routes (AKS, App Gateway, IPs, identities, roles, vault policies) via the real SDKs."""

from __future__ import annotations

import uuid

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
)
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network import models as net

from sandbox.azure import AzureEmulator
from sandbox.azure.arm import resource_id
from tests.emulator_fixtures import SUBSCRIPTION, emulator_credential

pytestmark = pytest.mark.emulator
RG = "rg-mesh"
ADMIN_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\nusers: [{name: admin}]\n"
USER_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\nusers: [{name: user}]\n"


def test_managed_cluster_and_credentials(
    emulator: AzureEmulator, aks_client: ContainerServiceClient
) -> None:
    emulator.register_cluster(
        SUBSCRIPTION,
        RG,
        "aks-west",
        location="westus2",
        admin_kubeconfig=ADMIN_KUBECONFIG,
        user_kubeconfig=USER_KUBECONFIG,
        fqdn="aks-west.example.azmk8s.io",
        aad=True,
    )
    cluster = aks_client.managed_clusters.get(RG, "aks-west")
    assert (cluster.name, cluster.location, cluster.fqdn) == (
        "aks-west",
        "westus2",
        "aks-west.example.azmk8s.io",
    )
    assert cluster.provisioning_state == "Succeeded"
    assert cluster.node_resource_group == f"MC_{RG}_aks-west_westus2"
    assert cluster.aad_profile is not None
    assert cluster.aad_profile.managed
    addons = cluster.addon_profiles or {}
    kv_identity = addons["azureKeyvaultSecretsProvider"].identity
    assert kv_identity is not None
    assert kv_identity.client_id
    assert kv_identity.object_id
    assert addons["ingressApplicationGateway"].enabled
    node_rg = f"MC_{RG}_aks-west_westus2"  # the sample's gateway, made with the cluster
    gateway = resource_id(
        SUBSCRIPTION, node_rg, "Microsoft.Network/applicationGateways", "aks-appgw-westus2"
    )
    config = addons["ingressApplicationGateway"].config or {}
    assert config["effectiveApplicationGatewayId"] == gateway
    admin = aks_client.managed_clusters.list_cluster_admin_credentials(RG, "aks-west")
    assert [(k.name, k.value) for k in admin.kubeconfigs or []] == [
        ("clusterAdmin", ADMIN_KUBECONFIG.encode())
    ]
    user = aks_client.managed_clusters.list_cluster_user_credentials(RG, "aks-west")
    assert (user.kubeconfigs or [])[0].value == USER_KUBECONFIG.encode()
    with pytest.raises(ResourceNotFoundError, match="aks-none"):
        aks_client.managed_clusters.get(RG, "aks-none")


def test_admin_cluster_registration_over_http(
    emulator: AzureEmulator, aks_client: ContainerServiceClient
) -> None:
    body = {
        "location": "northeurope",
        "admin_kubeconfig": ADMIN_KUBECONFIG,
        "user_kubeconfig": USER_KUBECONFIG,
        "fqdn": "x.example",
        "aad": False,
    }
    reply = requests.put(
        f"{emulator.url}/_emulator/clusters/{SUBSCRIPTION}/{RG}/aks-http",
        json=body,
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert reply.status_code == 200
    cluster = aks_client.managed_clusters.get(RG, "aks-http")
    assert cluster.aad_profile is None
    assert cluster.location == "northeurope"


def test_application_gateway_long_running_put(
    emulator: AzureEmulator,
    network_client: NetworkManagementClient,
    msi_client: ManagedServiceIdentityClient,
) -> None:
    identity = msi_client.user_assigned_identities.create_or_update(
        RG, "agw-id", Identity(location="westeurope")
    )
    assert identity.id is not None
    gw_id = resource_id(SUBSCRIPTION, RG, "Microsoft.Network/applicationGateways", "agw")
    gateway = net.ApplicationGateway(
        location="westeurope",
        identity=net.ManagedServiceIdentity(
            type="UserAssigned", user_assigned_identities={identity.id: {}}
        ),
        sku=net.ApplicationGatewaySku(name="Standard_v2", tier="Standard_v2", capacity=1),
        ssl_certificates=[
            net.ApplicationGatewaySslCertificate(
                name="listener", key_vault_secret_id=f"{emulator.url}/secrets/listener"
            )
        ],
        trusted_root_certificates=[
            net.ApplicationGatewayTrustedRootCertificate(name="root", data="TUlJQg==")
        ],
        frontend_ip_configurations=[
            net.ApplicationGatewayFrontendIPConfiguration(
                name="public", public_ip_address=net.SubResource(id=f"{gw_id}-pip")
            )
        ],
        frontend_ports=[net.ApplicationGatewayFrontendPort(name="https", port=443)],
    )
    result = network_client.application_gateways.begin_create_or_update(RG, "agw", gateway).result()
    assert result.id == gw_id
    assert result.provisioning_state == "Succeeded"
    ssl_cert = (result.ssl_certificates or [])[0]
    assert ssl_cert.key_vault_secret_id == f"{emulator.url}/secrets/listener"
    assert ssl_cert.id == f"{gw_id}/sslCertificates/listener"
    assert (result.trusted_root_certificates or [])[0].data == "TUlJQg=="
    assigned = (result.identity.user_assigned_identities or {}) if result.identity else {}
    assert assigned[identity.id].client_id == identity.client_id
    lro = [
        (e["method"], e["status"], e["path"].split("/")[-2])
        for e in emulator.requests_log()
        if "/Microsoft.Network/" in e["path"]
    ]
    assert lro == [
        ("PUT", 201, "applicationGateways"),
        ("GET", 200, "operations"),
        ("GET", 200, "operations"),
        ("GET", 200, "applicationGateways"),
    ]
    again = network_client.application_gateways.begin_create_or_update(RG, "agw", gateway).result()
    assert again.provisioning_state == "Succeeded"
    assert [e["status"] for e in emulator.requests_log() if e["method"] == "PUT"][-1] == 200
    assert network_client.application_gateways.get(RG, "agw").frontend_ports[0].port == 443


def test_public_ip_is_allocated_and_stable(network_client: NetworkManagementClient) -> None:
    body = net.PublicIPAddress(
        location="westeurope",
        sku=net.PublicIPAddressSku(name="Standard"),
        public_ip_allocation_method="Static",
    )
    first = network_client.public_ip_addresses.begin_create_or_update(RG, "pip-a", body).result()
    assert first.ip_address is not None
    assert first.ip_address.startswith("20.")
    again = network_client.public_ip_addresses.begin_create_or_update(RG, "pip-a", body).result()
    other = network_client.public_ip_addresses.begin_create_or_update(RG, "pip-b", body).result()
    assert again.ip_address == first.ip_address != other.ip_address
    assert network_client.public_ip_addresses.get(RG, "pip-a").ip_address == first.ip_address


def test_user_assigned_identity(msi_client: ManagedServiceIdentityClient) -> None:
    created = msi_client.user_assigned_identities.create_or_update(
        RG, "id-mesh", Identity(location="westeurope")
    )
    fetched = msi_client.user_assigned_identities.get(RG, "id-mesh")
    assert (fetched.client_id, fetched.principal_id) == (created.client_id, created.principal_id)
    assert uuid.UUID(fetched.client_id or "")
    assert fetched.tenant_id
    with pytest.raises(ResourceNotFoundError):
        msi_client.user_assigned_identities.get(RG, "id-none")


def test_role_assignment_and_conflict(authorization_client: AuthorizationManagementClient) -> None:
    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}"
    reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
    role = (
        f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{reader}"
    )
    params = RoleAssignmentCreateParameters(
        role_definition_id=role, principal_id=str(uuid.uuid4()), principal_type="ServicePrincipal"
    )
    name = str(uuid.uuid4())
    created = authorization_client.role_assignments.create(scope, name, params)
    assert created.id == f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    fetched = authorization_client.role_assignments.get(scope, name)
    assert (fetched.principal_id, fetched.role_definition_id, fetched.scope) == (
        params.principal_id,
        role,
        scope,
    )
    with pytest.raises(ResourceExistsError, match="RoleAssignmentExists"):
        authorization_client.role_assignments.create(scope, str(uuid.uuid4()), params)


def test_vault_access_policies(
    emulator: AzureEmulator, keyvault_mgmt_client: KeyVaultManagementClient
) -> None:
    emulator.register_vault(SUBSCRIPTION, RG, "kv-mesh")
    vault = keyvault_mgmt_client.vaults.get(RG, "kv-mesh")
    assert vault.properties.vault_uri == f"{emulator.url}/"
    principal = str(uuid.uuid4())

    def update(kind: str, secrets: list[str]) -> None:
        entry = AccessPolicyEntry(
            tenant_id=emulator.tenant_id,
            object_id=principal,
            permissions=Permissions(secrets=secrets),
        )
        params = VaultAccessPolicyParameters(
            properties=VaultAccessPolicyProperties(access_policies=[entry])
        )
        keyvault_mgmt_client.vaults.update_access_policy(RG, "kv-mesh", kind, params)

    def secrets_permissions() -> list[list[str]]:
        policies = keyvault_mgmt_client.vaults.get(RG, "kv-mesh").properties.access_policies or []
        return [list(p.permissions.secrets or []) for p in policies if p.object_id == principal]

    update("add", ["get"])
    update("add", ["list", "get"])
    assert secrets_permissions() == [["get", "list"]]
    update("replace", ["set"])
    assert secrets_permissions() == [["set"]]
    update("remove", ["set"])
    assert secrets_permissions() == []


def test_arm_errors(emulator: AzureEmulator) -> None:
    verify = str(emulator.ca_bundle)
    base = f"{emulator.url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers"
    params = {"api-version": "2026-03-01"}
    unauthenticated = requests.get(
        f"{base}/Microsoft.Network/applicationGateways/x", params=params, verify=verify, timeout=5
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "AuthenticationFailed"
    token = emulator_credential(emulator).get_token("https://management.azure.com/.default").token
    auth = {"Authorization": f"Bearer {token}"}
    unknown = requests.get(
        f"{base}/Microsoft.Compute/virtualMachines/vm",
        params=params,
        headers=auth,
        verify=verify,
        timeout=5,
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"]
    wrong_method = requests.delete(
        f"{base}/Microsoft.Network/applicationGateways/x",
        params=params,
        headers=auth,
        verify=verify,
        timeout=5,
    )
    assert wrong_method.status_code == 405
    no_version = requests.get(
        f"{base}/Microsoft.Network/applicationGateways/x", headers=auth, verify=verify, timeout=5
    )
    assert no_version.status_code == 400
    assert no_version.json()["error"]["code"] == "MissingApiVersionParameter"


def test_wrong_secret_on_arm(emulator: AzureEmulator) -> None:
    client = ContainerServiceClient(
        emulator_credential(emulator, "not-the-registered-secret"),
        SUBSCRIPTION,
        base_url=emulator.url,
        connection_verify=str(emulator.ca_bundle),
    )
    with pytest.raises(ClientAuthenticationError):
        client.managed_clusters.get(RG, "aks-west")
