"""Pure folds from events to read models: no I/O, no clock, no randomness.

The same fold serves the live read model (inside the append transaction),
rebuilds, time travel, ``verify`` and the tests.
"""

from sessionstream.projections.account import TokenProjection, UserProjection
from sessionstream.projections.campaign import CampaignProjection
from sessionstream.projections.run import RunProjection
from sessionstream.projections.session import SessionProjection
from sessionstream.projections.usage import UsageProjection

ALL = (
    SessionProjection(),
    RunProjection(),
    CampaignProjection(),
    UserProjection(),
    TokenProjection(),
    UsageProjection(),
)

__all__ = [
    "ALL",
    "CampaignProjection",
    "RunProjection",
    "SessionProjection",
    "TokenProjection",
    "UsageProjection",
    "UserProjection",
]
