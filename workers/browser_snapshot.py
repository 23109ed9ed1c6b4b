"""The page snapshot browser tools show the model, and the element refs the other tools take.

Playwright's ARIA snapshot has no refs, so we make our own: `SNAPSHOT_JS` walks the page,
writes one line per element with a role (`- button "Send" [ref=e7]`), and stamps each such
element with `data-aq-ref="e7"`. A later `browser_click(ref="e7")` finds it by that attribute.
Refs are renumbered by every snapshot and vanish with the page, so a stale ref is refused
rather than matched to some other element.
"""

from __future__ import annotations

import re

REF_ATTRIBUTE = "data-aq-ref"
REF = re.compile(r"e[0-9]{1,6}")

SNAPSHOT_JS = r"""
() => {
  const ATTR = "data-aq-ref";
  document.querySelectorAll("[" + ATTR + "]").forEach((e) => e.removeAttribute(ATTR));
  const inputRoles = {checkbox: "checkbox", radio: "radio", submit: "button", button: "button",
    reset: "button", range: "slider", search: "searchbox", number: "spinbutton"};
  const tagRoles = {A: "link", BUTTON: "button", SELECT: "combobox", TEXTAREA: "textbox",
    H1: "heading", H2: "heading", H3: "heading", H4: "heading", H5: "heading", H6: "heading",
    IMG: "img", P: "paragraph", LI: "listitem", UL: "list", OL: "list", TABLE: "table",
    TR: "row", TD: "cell", TH: "columnheader", FORM: "form", NAV: "navigation",
    LABEL: "label", OPTION: "option"};
  const roleOf = (e) => {
    if (e.getAttribute("role")) return e.getAttribute("role");
    if (e.tagName === "INPUT") {
      const type = (e.getAttribute("type") || "text").toLowerCase();
      return type === "hidden" ? null : (inputRoles[type] || "textbox");
    }
    if (e.tagName === "A" && !e.hasAttribute("href")) return null;
    return tagRoles[e.tagName] || null;
  };
  const clean = (t) => (t || "").replace(/\s+/g, " ").trim().slice(0, 200);
  const nameOf = (e, role) => {
    const label = e.getAttribute("aria-label") || e.getAttribute("alt") || e.getAttribute("title");
    if (label) return clean(label);
    if (e.labels && e.labels.length) return clean(e.labels[0].innerText);
    if (e.tagName === "INPUT" && ["submit", "button", "reset"].includes(e.type))
      return clean(e.value);
    if (["textbox", "searchbox", "combobox", "spinbutton"].includes(role))
      return clean(e.getAttribute("placeholder") || e.getAttribute("name"));
    if (["list", "table", "row", "form", "navigation"].includes(role)) return "";
    return clean(e.innerText);
  };
  const hidden = (e) => {
    const s = getComputedStyle(e);
    return s.display === "none" || s.visibility === "hidden";
  };
  const leaf = new Set(["link", "button", "heading", "paragraph", "label", "option", "img",
    "textbox", "searchbox", "checkbox", "radio", "slider", "spinbutton", "combobox"]);
  const lines = [];
  let n = 0;
  const walk = (node, depth) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        const text = clean(child.textContent);
        if (text) lines.push("  ".repeat(depth) + "- text: " + JSON.stringify(text));
        continue;
      }
      if (child.nodeType !== Node.ELEMENT_NODE || hidden(child)) continue;
      if (["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE"].includes(child.tagName)) continue;
      const role = roleOf(child);
      if (!role) { walk(child, depth); continue; }
      const ref = "e" + (++n);
      child.setAttribute(ATTR, ref);
      let line = "  ".repeat(depth) + "- " + role;
      const name = nameOf(child, role);
      if (name) line += " " + JSON.stringify(name);
      if (role === "heading") line += " [level=" + child.tagName.slice(1) + "]";
      if (["checkbox", "radio"].includes(role) && child.checked) line += " [checked]";
      if (child.disabled) line += " [disabled]";
      line += " [ref=" + ref + "]";
      if (["textbox", "searchbox", "spinbutton"].includes(role) && child.value)
        line += ": " + JSON.stringify(child.value);
      if (role === "combobox" && child.tagName === "SELECT")
        line += ": " + JSON.stringify([...child.selectedOptions].map((o) => o.label).join(", "));
      if (role === "link" && child.href) line += " (" + child.getAttribute("href") + ")";
      lines.push(line);
      if (child.tagName === "SELECT") {
        for (const o of child.options)
          lines.push("  ".repeat(depth + 1) + "- option " + JSON.stringify(clean(o.label)));
      } else if (!leaf.has(role)) {
        walk(child, depth + 1);
      }
    }
  };
  if (document.body) walk(document.body, 0);
  return lines.join("\n");
}
"""


def ref_selector(ref: str) -> str:
    """The CSS selector of a snapshot ref; anything not shaped like one is refused."""
    if not REF.fullmatch(ref):
        raise ValueError(
            f"element ref {ref!r} is not a snapshot ref: give one like 'e3' from browser_snapshot"
        )
    return f'[{REF_ATTRIBUTE}="{ref}"]'
