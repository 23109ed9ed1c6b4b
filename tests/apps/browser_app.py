"""An app with browser and gui sandboxes, for the FC plan's sizing."""

from agentqueue import App

app = App("web")
app.sandbox_tools("browser", pool_size=1)
app.sandbox_tools("base", "gui", pool_size=1)
