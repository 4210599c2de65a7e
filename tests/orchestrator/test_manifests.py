# The example manifests of deploy/kubevirt/, checked as far as a machine
# without a cluster can: the YAML parses, every field exists in KubeVirt's
# backup.kubevirt.io/v1alpha1 types and in Kubernetes' core/v1 and batch/v1
# (the subsets below, written from their published API references), what
# KubeVirt's admission rules ask of a VirtualMachineBackup holds, and the
# command lines are ones the real s3chain binary accepts, with the files
# they name mounted as the secrets and ConfigMaps that hold them.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import subprocess
import unittest

import yaml

from harness import REPO, S3CHAIN

DEPLOY = os.path.join(REPO, 'deploy', 'kubevirt')

# A schema is a dict of fields (each a schema), [item schema] for a list,
# SCALAR for a value, or FREE for a map of names to values
SCALAR = 'scalar'
FREE = 'free'

OBJECT_META = {'name': SCALAR, 'namespace': SCALAR, 'labels': FREE,
               'annotations': FREE, 'generateName': SCALAR,
               'ownerReferences': [FREE], 'finalizers': [SCALAR]}
TYPED_REF = {'apiGroup': SCALAR, 'kind': SCALAR, 'name': SCALAR}
BACKUP_VOLUME = {'volumeName': SCALAR, 'dataEndpoint': SCALAR,
                 'mapEndpoint': SCALAR}
CONDITION = {'type': SCALAR, 'status': SCALAR, 'reason': SCALAR,
             'message': SCALAR, 'lastTransitionTime': SCALAR,
             'observedGeneration': SCALAR}

# backup.kubevirt.io/v1alpha1 (staging/src/kubevirt.io/api/backup/v1alpha1)
VM_BACKUP = {
    'spec': {'source': TYPED_REF, 'mode': SCALAR, 'pvcName': SCALAR,
             'skipQuiesce': SCALAR, 'forceFullBackup': SCALAR,
             'tokenSecretRef': SCALAR, 'ttlDuration': SCALAR},
    'status': {'type': SCALAR, 'conditions': [CONDITION],
               'checkpointName': SCALAR, 'endpointCert': SCALAR,
               'includedVolumes': [BACKUP_VOLUME], 'exportUID': SCALAR},
}
VM_BACKUP_TRACKER = {
    'spec': {'source': TYPED_REF},
    'status': {'latestCheckpoint': {'name': SCALAR, 'creationTime': SCALAR,
                                    'volumes': [BACKUP_VOLUME]},
               'checkpointRedefinitionRequired': SCALAR},
}

# core/v1
RESOURCES = {'requests': FREE, 'limits': FREE}
SECURITY_CONTEXT = {
    'allowPrivilegeEscalation': SCALAR, 'readOnlyRootFilesystem': SCALAR,
    'capabilities': {'add': [SCALAR], 'drop': [SCALAR]},
    'privileged': SCALAR, 'runAsUser': SCALAR, 'runAsGroup': SCALAR,
    'runAsNonRoot': SCALAR, 'seccompProfile': {'type': SCALAR,
                                               'localhostProfile': SCALAR},
}
CONTAINER = {
    'name': SCALAR, 'image': SCALAR, 'imagePullPolicy': SCALAR,
    'command': [SCALAR], 'args': [SCALAR], 'workingDir': SCALAR,
    'env': [{'name': SCALAR, 'value': SCALAR, 'valueFrom': FREE}],
    'volumeMounts': [{'name': SCALAR, 'mountPath': SCALAR,
                      'readOnly': SCALAR, 'subPath': SCALAR}],
    'volumeDevices': [{'name': SCALAR, 'devicePath': SCALAR}],
    'resources': RESOURCES, 'securityContext': SECURITY_CONTEXT,
    'restartPolicy': SCALAR,
}
VOLUME = {
    'name': SCALAR,
    'emptyDir': {'medium': SCALAR, 'sizeLimit': SCALAR},
    'configMap': {'name': SCALAR, 'items': [FREE], 'defaultMode': SCALAR,
                  'optional': SCALAR},
    'secret': {'secretName': SCALAR, 'items': [FREE],
               'defaultMode': SCALAR, 'optional': SCALAR},
    'persistentVolumeClaim': {'claimName': SCALAR, 'readOnly': SCALAR},
}
POD_SPEC = {
    'restartPolicy': SCALAR, 'serviceAccountName': SCALAR,
    'securityContext': {'seccompProfile': {'type': SCALAR},
                        'runAsUser': SCALAR, 'runAsGroup': SCALAR,
                        'runAsNonRoot': SCALAR, 'fsGroup': SCALAR},
    'initContainers': [CONTAINER], 'containers': [CONTAINER],
    'volumes': [VOLUME], 'nodeSelector': FREE, 'tolerations': [FREE],
    'affinity': FREE,
}
PVC = {'spec': {'accessModes': [SCALAR], 'volumeMode': SCALAR,
                'resources': RESOURCES, 'storageClassName': SCALAR,
                'dataSource': FREE, 'dataSourceRef': FREE,
                'selector': FREE, 'volumeName': SCALAR}}
SECRET = {'type': SCALAR, 'data': FREE, 'stringData': FREE,
          'immutable': SCALAR}
CONFIG_MAP = {'data': FREE, 'binaryData': FREE, 'immutable': SCALAR}

# batch/v1
JOB = {'spec': {
    'backoffLimit': SCALAR, 'activeDeadlineSeconds': SCALAR,
    'ttlSecondsAfterFinished': SCALAR, 'completions': SCALAR,
    'parallelism': SCALAR,
    'podFailurePolicy': {'rules': [{
        'action': SCALAR,
        'onExitCodes': {'containerName': SCALAR, 'operator': SCALAR,
                        'values': [SCALAR]},
        'onPodConditions': [FREE]}]},
    'template': {'metadata': OBJECT_META, 'spec': POD_SPEC},
}}

KINDS = {
    ('backup.kubevirt.io/v1alpha1', 'VirtualMachineBackup'): VM_BACKUP,
    ('backup.kubevirt.io/v1alpha1', 'VirtualMachineBackupTracker'):
        VM_BACKUP_TRACKER,
    ('v1', 'PersistentVolumeClaim'): PVC,
    ('v1', 'Secret'): SECRET,
    ('v1', 'ConfigMap'): CONFIG_MAP,
    ('batch/v1', 'Job'): JOB,
}


def unknown_fields(value, schema, path: str):
    """The paths of @value that @schema does not have"""
    if schema == FREE:
        return []
    if schema == SCALAR:
        return [] if not isinstance(value, (dict, list)) \
            else [f'{path} (not a value)']
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f'{path} (not a list)']
        return [u for i, item in enumerate(value)
                for u in unknown_fields(item, schema[0], f'{path}[{i}]')]
    if not isinstance(value, dict):
        return [f'{path} (not an object)']
    return [u for k, v in value.items()
            for u in ([f'{path}.{k}'] if k not in schema
                      else unknown_fields(v, schema[k], f'{path}.{k}'))]


def documents():
    for name in sorted(os.listdir(DEPLOY)):
        with open(os.path.join(DEPLOY, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield name, doc


def help_of(command: str) -> str:
    return subprocess.run([S3CHAIN, command, '--help'], check=True,
                          capture_output=True, text=True).stdout


class TestManifests(unittest.TestCase):
    def test_every_field_exists(self) -> None:
        kinds = set()
        for name, doc in documents():
            key = (doc.get('apiVersion'), doc.get('kind'))
            self.assertIn(key, KINDS, name)
            kinds.add(key[1])
            schema = dict(KINDS[key], apiVersion=SCALAR, kind=SCALAR,
                          metadata=OBJECT_META)
            self.assertEqual(unknown_fields(doc, schema, key[1]), [], name)
        self.assertTrue({'VirtualMachineBackup',
                         'VirtualMachineBackupTracker', 'Job'} <= kinds)

    def test_kubevirt_admission_rules(self) -> None:
        """What KubeVirt's CEL rules ask, and Pull mode for s3chain"""
        for _, doc in documents():
            if doc['kind'] == 'VirtualMachineBackup':
                spec = doc['spec']
                self.assertEqual(spec['mode'], 'Pull')
                self.assertTrue(spec['pvcName'])
                self.assertTrue(spec['tokenSecretRef'])
                src = spec['source']
                self.assertIn((src['apiGroup'], src['kind']),
                              [('kubevirt.io', 'VirtualMachine'),
                               ('backup.kubevirt.io',
                                'VirtualMachineBackupTracker')])
            if doc['kind'] == 'VirtualMachineBackupTracker':
                self.assertEqual((doc['spec']['source']['apiGroup'],
                                  doc['spec']['source']['kind']),
                                 ('kubevirt.io', 'VirtualMachine'))

    def test_commands_and_their_files(self) -> None:
        """Every option of a Job's s3chain command is one the binary's
        help lists; every file it names is mounted from a volume, secrets
        as files no one else may read"""
        secrets = {}
        maps = {}
        for _, doc in documents():
            if doc['kind'] == 'Secret':
                secrets[doc['metadata']['name']] = doc['stringData']
            if doc['kind'] == 'ConfigMap':
                maps[doc['metadata']['name']] = doc['data']
        jobs = [doc for _, doc in documents() if doc['kind'] == 'Job']
        self.assertEqual(len(jobs), 2)
        for job in jobs:
            pod = job['spec']['template']['spec']
            volumes = {v['name']: v for v in pod['volumes']}
            containers = pod['containers'] + pod.get('initContainers', [])
            for c in containers:
                for m in c.get('volumeMounts', []) + \
                        c.get('volumeDevices', []):
                    self.assertIn(m['name'], volumes)
            main = next(c for c in pod['containers']
                        if c['name'] == 's3chain')
            argv = main['command']
            self.assertEqual(argv[0], 's3chain')
            usage = help_of(argv[1])
            for arg in argv[2:]:
                if arg.startswith('--'):
                    self.assertRegex(usage, rf'(?<![\w-]){arg}(?![\w-])')
            mounts = {m['mountPath']: volumes[m['name']]
                      for m in main.get('volumeMounts', [])}
            devices = {d['devicePath'] for d in
                       main.get('volumeDevices', [])}
            for path in (a.split('=', 1)[-1] for a in argv[2:]
                         if a.startswith('/') or '=/' in a):
                if path in devices or path in mounts:
                    continue
                where = os.path.dirname(path)
                self.assertIn(where, mounts, path)
                vol = mounts[where]
                if 'secret' in vol:
                    self.assertEqual(vol['secret']['defaultMode'], 0o400)
                    self.assertIn(os.path.basename(path),
                                  secrets[vol['secret']['secretName']])
                if 'configMap' in vol:
                    self.assertIn(os.path.basename(path),
                                  maps[vol['configMap']['name']])


if __name__ == '__main__':
    unittest.main()
