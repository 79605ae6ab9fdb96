"""The provisioning stage (seed step 00): the mesh's infrastructure through Terraform.

``spec.provision`` decides: ``adopt`` reads the module's outputs only; ``plan`` plans, publishes
the summary as an artifact and tells the caller to stop; ``apply`` plans (the same artifact)
and applies the saved plan when it has changes, then reads the outputs. The outputs are
returned to the caller for the later stages of the same run and never cached: the next run
reads them again.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.runs import FLOW_OPTIONS
from meshflow.infra import InfraOutputs, PlanSummary
from meshflow.spec import MeshSpec
from tasks.terraform import (
    close_terraform_workspace,
    open_terraform_workspace,
    terraform_apply,
    terraform_init,
    terraform_output,
    terraform_plan,
)


class Provisioned(BaseModel):
    """What the stage did, and whether the run goes on.

    Attributes:
        mode: the spec's ``provision``.
        plan: the plan's summary (``plan`` and ``apply``; None for ``adopt``).
        applied: whether a plan was applied.
        outputs: the module's outputs (``adopt`` and ``apply``; None after ``plan``).
    """

    model_config = ConfigDict(frozen=True)
    module: str
    mode: Literal["adopt", "plan", "apply"]
    plan: PlanSummary | None = None
    applied: bool = False
    outputs: InfraOutputs | None = None

    @property
    def stop(self) -> bool:
        """Whether the caller stops after this stage (``plan``: the user reviews first)."""
        return self.mode == "plan"

    def line(self) -> str:
        """One line for the run's summary."""
        if self.plan is None:
            return f"infrastructure {self.module}: adopted (outputs read)"
        counts = (
            f"{self.plan.add} to add, {self.plan.change} to change, {self.plan.destroy} to destroy"
        )
        if self.mode == "plan":
            return f"infrastructure {self.module}: planned ({counts}); stopped for review"
        done = f"applied ({counts})" if self.applied else "no changes"
        return f"infrastructure {self.module}: {done}"


def artifact_key(environment: str) -> str:
    """The key of the plan's markdown artifact."""
    return f"terraform-plan-{environment}"


async def provision(spec: MeshSpec, *, subscription_id: str | None = None) -> Provisioned | None:
    """The provisioning stage, for a parent flow to await first; None without ``spec.terraform``.

    ``subscription_id`` is given to Terraform as ``ARM_SUBSCRIPTION_ID`` (None: the worker's
    own ``ARM_SUBSCRIPTION_ID``, if set).

    Raises:
        TerraformError: a Terraform command failed (its stderr in the message, redacted).
        InvalidError: the module, var file or the outputs are not what meshflow needs.
    """
    if spec.terraform is None:
        return None
    ws = await open_terraform_workspace(spec.terraform, spec.credentials_block, subscription_id)
    try:
        await terraform_init(ws)
        if spec.provision == "adopt":
            return Provisioned(module=ws.module, mode="adopt", outputs=await terraform_output(ws))
        saved = await terraform_plan(ws)
        await acreate_markdown_artifact(
            saved.summary.markdown(), key=artifact_key(spec.environment)
        )
        if spec.provision == "plan":
            return Provisioned(module=ws.module, mode="plan", plan=saved.summary)
        await terraform_apply(ws, saved)
        outputs = await terraform_output(ws)
        return Provisioned(
            module=ws.module, mode="apply", plan=saved.summary, applied=saved.has_changes,
            outputs=outputs,
        )  # fmt: skip
    finally:
        await close_terraform_workspace(ws)


@flow(name="provision-infrastructure", **FLOW_OPTIONS)
async def provision_infrastructure(
    spec: MeshSpec, subscription_id: str | None = None
) -> Provisioned | None:
    """Provision (or adopt, or plan) the infrastructure of ``spec`` with its Terraform module."""
    result = await provision(spec, subscription_id=subscription_id)
    logger = get_run_logger()
    if result is None:
        logger.info("no terraform module in the mesh description: the blocks are adopted as is")
    else:
        logger.info("%s", result.line())
    return result
