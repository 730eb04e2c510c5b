"""openYuanrong's configuration classes: `Config` (how `yr.init` connects), `InvokeOptions`
(resources and scheduling of calls and instances), scheduling affinities and KV parameters.

Fields keep openYuanrong's names and defaults; those yr has no use for are accepted and ignored
(its documented examples set some, and even set attributes that are not fields, such as
`opt.ns`: assigning any attribute works, as it does there).
"""

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Config:
    """How `yr.init` finds the cluster. `session` (yr's own) names a session folder or its
    session.json; `server_address` a master (host:port). Without either: `$YR_SESSION`,
    `$YR_MASTER_ADDRESS`, else the newest session `yr start` wrote on this host.
    `working_dir` is a folder made available to every function process (its cwd and first on
    its sys.path); without it the driver's script folder is put on their sys.path."""

    session: Optional[str] = None
    server_address: str = ""
    ds_address: str = ""
    working_dir: str = ""
    code_dir: str = ""
    log_level: str = ""
    invoke_timeout: int = 900
    in_cluster: Optional[bool] = None
    job_id: str = ""
    ns: str = ""
    custom_envs: Dict[str, str] = field(default_factory=dict)
    runtime_env: Optional[dict] = None
    num_cpus: Optional[int] = None
    auth_token: str = ""
    local_mode: bool = False
    is_driver: bool = True
    function_id: str = ""
    load_paths: List[str] = field(default_factory=list)


class AffinityKind(enum.IntEnum):
    RESOURCE = 10
    INSTANCE = 20


class AffinityType(enum.IntEnum):
    PREFERRED = 1
    PREFERRED_ANTI = 2
    REQUIRED = 3
    REQUIRED_ANTI = 4


class OperatorType(enum.IntEnum):
    LABEL_IN = 1
    LABEL_NOT_IN = 2
    LABEL_EXISTS = 3
    LABEL_NOT_EXISTS = 4


class AffinityScope(enum.IntEnum):
    POD = 1
    NODE = 2


class LabelOperator:
    """A condition on a node label."""

    def __init__(self, operator_type, key, values=None):
        self.operator_type = OperatorType(operator_type)
        self.key = key
        self.values = list(values or [])


class Affinity:
    """Where a call's instances may (or should) run, by node labels."""

    def __init__(self, affinity_kind, affinity_type, label_operators, affinity_scope=None):
        self.affinity_kind = AffinityKind(affinity_kind)
        self.affinity_type = AffinityType(affinity_type)
        if isinstance(label_operators, LabelOperator):
            label_operators = [label_operators]
        self.label_operators = list(label_operators)
        self.affinity_scope = affinity_scope

    def rules(self):
        """As yr's label rules: (kind, key, values) with kind required, preferred or anti."""
        out = []
        for op in self.label_operators:
            negative = op.operator_type in (OperatorType.LABEL_NOT_IN, OperatorType.LABEL_NOT_EXISTS)
            anti = (self.affinity_type in (AffinityType.REQUIRED_ANTI, AffinityType.PREFERRED_ANTI)) != negative
            if anti:
                kind = "anti"
            elif self.affinity_type in (AffinityType.REQUIRED, AffinityType.REQUIRED_ANTI):
                kind = "required"
            else:
                kind = "preferred"
            values = op.values if op.operator_type in (OperatorType.LABEL_IN, OperatorType.LABEL_NOT_IN) else []
            out.append((kind, op.key, list(values)))
        return out


@dataclass
class InvokeOptions:
    """Resources and scheduling of a call (or of an instance's creation). `cpu` in millicores,
    `memory` in MB; `name` and `namespace` name a stateful instance (found again by name)."""

    cpu: int = 500
    memory: int = 500
    concurrency: Optional[int] = None
    custom_resources: Dict[str, float] = field(default_factory=dict)
    custom_extensions: Dict[str, str] = field(default_factory=dict)
    labels: List[str] = field(default_factory=list)
    affinity: Dict[str, str] = field(default_factory=dict)
    min_instances: int = 0
    max_instances: int = 0
    recover_retry_times: int = 0
    need_order: Optional[bool] = None
    name: str = ""
    namespace: str = ""
    schedule_affinities: list = field(default_factory=list)
    env_vars: Dict[str, str] = field(default_factory=dict)
    retry_times: int = 0
    runtime_env: dict = field(default_factory=dict)
    timeout: Optional[float] = None
    get_if_exists: bool = False

    def check_options_range(self):
        for attr in ("retry_times", "recover_retry_times", "min_instances"):
            v = getattr(self, attr)
            if not isinstance(v, int) or not 0 <= v <= 0x7FFFFFFF:
                raise ValueError(f"{attr} must be an int in [0, {0x7FFFFFFF}], got {v!r}")
        if not isinstance(self.max_instances, int) or not -1 <= self.max_instances <= 0x7FFFFFFF:
            raise ValueError(f"max_instances must be an int in [-1, {0x7FFFFFFF}], got {self.max_instances!r}")
        if self.concurrency is not None and not 1 <= int(self.concurrency) <= 1000:
            raise ValueError(f"concurrency must be in [1, 1000], got {self.concurrency!r}")
        if int(self.cpu) <= 0 or int(self.memory) <= 0:
            raise ValueError(f"cpu and memory must be positive, got cpu={self.cpu} memory={self.memory}")

    def check_options_valid(self):
        for attr in ("name", "namespace"):
            if not isinstance(getattr(self, attr), str):
                raise TypeError(f"{attr} must be a str")
        for attr in ("custom_resources", "env_vars", "custom_extensions"):
            if not isinstance(getattr(self, attr), dict):
                raise TypeError(f"{attr} must be a dict")

    def placement_rules(self):
        """The label rules of `schedule_affinities` and `labels` (each label required)."""
        rules = []
        for a in self.schedule_affinities or []:
            rules.extend(a.rules())
        for label in self.labels or []:
            key, _, value = label.partition("=")
            rules.append(("required", key, [value] if value else []))
        return rules


class ExistenceOpt(enum.IntEnum):
    NONE = 0
    NX = 1


class WriteMode(enum.IntEnum):
    NONE_L2_CACHE = 0
    WRITE_THROUGH_L2_CACHE = 1
    WRITE_BACK_L2_CACHE = 2
    NONE_L2_CACHE_EVICT = 3


class CacheType(enum.IntEnum):
    MEMORY = 0
    DISK = 1


@dataclass
class SetParam:
    existence: ExistenceOpt = ExistenceOpt.NONE
    write_mode: WriteMode = WriteMode.NONE_L2_CACHE
    ttl_second: int = 0
    cache_type: CacheType = CacheType.MEMORY
