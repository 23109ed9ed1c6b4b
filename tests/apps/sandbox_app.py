"""An app with base and filesystem sandboxes; the workspace root is each worker's own setting."""

from agentqueue import App

app = App("sbx")
app.sandbox_tools("base", "filesystem", pool_size=0)
