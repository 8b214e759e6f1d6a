"""Node tag names and values shared by every provider, the launcher and the autoscaler."""

TAG_CLUSTER_NAME = "corral-cluster-name"
TAG_NODE_KIND = "corral-node-kind"
TAG_NODE_TYPE = "corral-node-type"
TAG_NODE_STATUS = "corral-node-status"
TAG_LAUNCH_HASH = "corral-launch-hash"
TAG_RUNTIME_HASH = "corral-runtime-hash"
TAG_NODE_NAME = "corral-node-name"
# Last failure of a node (update-failed): "stage: command exited N" — short, human readable.
TAG_FAILURE = "corral-failure"
# The runtime head port chosen by a provider (process: a free port per cluster).
TAG_HEAD_PORT = "corral-head-port"

KIND_HEAD = "head"
KIND_WORKER = "worker"

# Bootstrap stages, in order; STATUS_UPDATE_FAILED ends a failed run.
STATUS_UNINITIALIZED = "uninitialized"
STATUS_WAITING_FOR_SSH = "waiting-for-ssh"
# SSH nodes only: the corral that runs `up` is installed there (launcher.ship).
STATUS_SHIPPING_CORRAL = "shipping-corral"
STATUS_SYNCING_FILES = "syncing-files"
STATUS_SETTING_UP = "setting-up"
STATUS_STARTING = "starting"
STATUS_UP_TO_DATE = "up-to-date"
STATUS_UPDATE_FAILED = "update-failed"

BOOTSTRAP_STAGES = (STATUS_WAITING_FOR_SSH, STATUS_SHIPPING_CORRAL, STATUS_SYNCING_FILES,
                    STATUS_SETTING_UP, STATUS_STARTING, STATUS_UP_TO_DATE)
