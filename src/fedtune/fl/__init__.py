"""Federated learning with NVFlare: provisioning, server/client processes, the job (controller + Client API
script), submission, export, and a whole federation on one machine (LocalFederation)."""
