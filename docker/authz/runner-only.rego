# Docker API authorization for the Airflow worker's engine access: the worker
# may run helical-runner containers the way RunnerDockerOperator starts them,
# and nothing else (no privileged container, no host namespaces, no extra
# capabilities or devices, no bind mount outside the data, model store and
# output folders, no other image, no exec, no volumes/networks/system calls).
#
# Evaluated per API request by an engine authorization plugin that speaks
# OPA's docker authz input (Method, Path, Body), e.g. openpolicyagent's
# opa-docker-authz, started with `dockerd --authorization-plugin=...`.
# Site settings come from data.helical (docker/authz/data.json):
#   image       the runner image reference
#   read_only   folders that may be mounted read-only (data, model store)
#   read_write  folders under which the run folders are mounted read-write (outputs)
#   networks    networks a runner container may join
# Tested with the operator's real create request: tests/workflow/test_docker_authz.py.
package docker.authz

import rego.v1

default allow := false

# The API path without its version prefix and query string:
# /v1.41/containers/abc/attach?stream=1 -> /containers/abc/attach
path := regex.replace(regex.replace(input.Path, `[?].*$`, ""), `^/v[0-9.]+`, "")

# Reads the operator needs (image presence, container state and logs).
allow if {
	input.Method in {"GET", "HEAD"}
	some prefix in ["/_ping", "/version", "/containers/", "/images/"]
	startswith(path, prefix)
}

allow if {
	input.Method == "POST"
	startswith(path, "/containers/create")
	runner_container(input.Body)
}

# The life cycle of a container (ids are checked by the engine; only runner
# containers can exist for this client, since nothing else can be created).
allow if {
	input.Method == "POST"
	regex.match(`^/containers/[A-Za-z0-9_.-]+/(start|wait|stop|kill|attach)$`, path)
}

allow if {
	input.Method == "DELETE"
	regex.match(`^/containers/[A-Za-z0-9_.-]+$`, path)
}

runner_container(body) if {
	body.Image == data.helical.image
	body.User == "10001:10001"
	host := object.get(body, "HostConfig", {})
	not object.get(host, "Privileged", false)
	every key in ["CapAdd", "Devices", "Binds", "VolumesFrom", "SecurityOpt", "Links"] {
		empty(host, key)
	}
	not host_namespace(host)
	object.get(host, "NetworkMode", "none") in data.helical.networks
	every m in mounts(host) {
		allowed_mount(m)
	}
}

# A field that is absent, null or an empty list.
empty(obj, key) if not obj[key]

empty(obj, key) if obj[key] == null

empty(obj, key) if count(obj[key]) == 0

mounts(host) := host.Mounts if host.Mounts != null

mounts(host) := [] if not host.Mounts

host_namespace(host) if {
	some key in ["PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"]
	object.get(host, key, "") == "host"
}

host_namespace(host) if {
	startswith(object.get(host, "NetworkMode", ""), "container:")
}

allowed_mount(m) if {
	m.Type == "bind"
	m.ReadOnly == true
	m.Source == m.Target
	some folder in data.helical.read_only
	under(m.Source, folder)
}

allowed_mount(m) if {
	m.Type == "bind"
	m.Source == m.Target
	some folder in data.helical.read_write
	under(m.Source, folder)
}

# `path` is `folder` or inside it, with no `..` step out of it.
under(p, folder) if {
	not contains(p, "/../")
	not endswith(p, "/..")
	startswith(concat("", [p, "/"]), concat("", [trim_suffix(folder, "/"), "/"]))
}
