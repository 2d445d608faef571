"""Named value sets the chart is rendered with: the defaults and every
toggle, alone and all together."""

from __future__ import annotations

from typing import Any

EXTERNAL_ETCD = ["etcd-0.db.svc:2379", "http://etcd-1.db.svc:2379"]

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-etcd": {"etcd": {"enabled": False, "endpoints": EXTERNAL_ETCD}},
    "standalone": {"replicaCount": 1, "etcd": {"enabled": False}},
    "no-persistence": {
        "persistence": {"enabled": False},
        "etcd": {"persistence": {"enabled": False}},
    },
    "node-port": {
        "service": {"type": "NodePort", "nodePort": 30730},
        # "-": an explicitly empty storage class (no dynamic provisioning).
        "persistence": {"storageClass": "-"},
    },
    "hpa-cpu": {"autoscaling": {"enabled": True}},
    "hpa-queued-jobs": {
        "autoscaling": {
            "enabled": True,
            # null removes the default: scale on queued jobs alone.
            "targetCPUUtilizationPercentage": None,
            "queuedJobs": {"enabled": True, "averageValue": "50"},
        }
    },
    "monitors": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "interval": "15s"},
        }
    },
    "grafana-dashboard": {
        "metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                         "annotations": {"grafana_folder": "gearmesh"}}}
    },
    "network-policy": {
        "networkPolicy": {"enabled": True, "allowExternal": False, "egress": {"restrict": True}}
    },
    "network-policy-external-etcd": {
        "etcd": {"enabled": False, "endpoints": EXTERNAL_ETCD},
        "networkPolicy": {"enabled": True, "egress": {"restrict": True, "etcdPorts": [2379, 2381]}},
    },
    "tls": {
        "etcd": {"enabled": False, "endpoints": EXTERNAL_ETCD},
        "tls": {
            "gearman": {"secret": "gm-tls", "verifyClient": True, "aclConfigMap": "gm-acl",
                        "testClientSecret": "gm-test-client"},
            "peer": {"secret": "gm-peer-tls"},
            "etcd": {"secret": "gm-etcd-tls"},
            "certManager": {"enabled": True, "issuerRef": {"name": "cluster-ca"},
                            "extraDnsNames": ["gearman.example.com"]},
        },
    },
    "everything": {
        "image": {"repository": "registry.example/gearmesh", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "service": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
            "annotations": {"example.com/lb": "internal"},
        },
        "persistence": {
            "storageClass": "fast",
            "size": "20Gi",
            "retentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
        },
        "podAntiAffinity": "hard",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "node"}},
            }
        ],
        "priorityClassName": "high",
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "GEARMESH_THREADS", "value": "8"}],
        "node": {"queue": "sqlite", "fsync": "always", "jobRetries": 3, "exceptions": True},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 4,
            "maxReplicas": 12,
            "queuedJobs": {"enabled": True},
        },
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "networkPolicy": {
            "enabled": True,
            "allowExternal": False,
            "clientFrom": [{"namespaceSelector": {"matchLabels": {"team": "php"}}}],
            "httpFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "egress": {"restrict": True},
        },
        "etcd": {"replicaCount": 5, "podAntiAffinity": "hard"},
    },
}
