-- Deployment settings (default model, later limits), as one JSON document.

ALTER TABLE deployments ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
