"""Reading a graph exported from ComfyUI: the API format as it is, the UI save format converted.

ComfyUI's "Export (API)" is ``{node id: {"class_type", "inputs"}}``, what ``POST /prompt`` takes.
Its normal save file (``{"nodes": [...], "links": [...]}``) keeps widget values as a list per
node; they are mapped to input names with the node class's ``input_order`` from ``/object_info``
(skipping the extra values the UI keeps for ``control_after_generate`` and upload widgets),
links become ``[source id, slot]``, Reroute nodes are followed, a PrimitiveNode's value becomes the
input it feeds, notes and muted nodes are dropped. A node that cannot be converted faithfully
(bypassed, a class no catalogue knows, too few widget values) is named in the error.
"""

from dataclasses import dataclass, field

MAX_NODES = 500  # a graph larger than this is refused (a person's workflow has tens of nodes)
SKIPPED_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "upload")
MUTED, BYPASSED = 2, 4


class GraphRefused(ValueError):
    """The graph cannot be used; ``problems`` lists each reason, naming the node and input."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ImportedGraph:
    graph: dict  # API format
    source_format: str  # "api" or "ui"
    notes: list = field(default_factory=list)  # what the conversion dropped (notes, muted nodes)


def import_graph(data, object_info):
    """``data`` (parsed JSON) → :class:`ImportedGraph`, or :class:`GraphRefused` saying why."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return _from_ui(data, object_info)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data.get("prompt"):
        data = data["prompt"]  # a POST /prompt body
    if not isinstance(data, dict) or not data:
        raise GraphRefused(["Not a ComfyUI graph: expected the API format {node id: {class_type, inputs}} "
                            "or a saved workflow {nodes, links}."])
    if len(data) > MAX_NODES:
        raise GraphRefused([f"The graph has {len(data)} nodes; at most {MAX_NODES} are accepted."])
    problems = []
    graph = {}
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(f"Node {str(node_id)[:40]}: not a node (expected {{class_type, inputs}}).")
            continue
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            problems.append(f"Node {node_id} ({node['class_type'][:60]}): inputs must be an object.")
            continue
        if not object_info.has_node(node["class_type"]):
            problems.append(f"Node {node_id} ({node['class_type'][:60]}): no configured backend knows this node class.")
            continue
        graph[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs}
        if isinstance(node.get("_meta"), dict) and isinstance(node["_meta"].get("title"), str):
            graph[str(node_id)]["_meta"] = {"title": node["_meta"]["title"][:200]}
    if problems:
        raise GraphRefused(problems)
    return ImportedGraph(graph, "api")


def _from_ui(data, object_info):
    nodes = {node.get("id"): node for node in data["nodes"] if isinstance(node, dict)}
    if len(nodes) > MAX_NODES:
        raise GraphRefused([f"The graph has {len(nodes)} nodes; at most {MAX_NODES} are accepted."])
    links = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (link[1], link[2])  # id → (source node, source slot)
        elif isinstance(link, dict) and {"id", "origin_id", "origin_slot"} <= set(link):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
    problems, notes, graph = [], [], {}
    for node_id, node in sorted(nodes.items(), key=lambda item: str(item[0])):
        class_type = node.get("type")
        where = f"Node {node_id} ({class_type})"
        if class_type in SKIPPED_TYPES:
            notes.append(f"{where}: a note, left out")
            continue
        if class_type in ("Reroute", "PrimitiveNode"):
            continue  # resolved where they are used
        if node.get("mode") == MUTED:
            notes.append(f"{where}: muted, left out")
            continue
        if node.get("mode") == BYPASSED:
            problems.append(f"{where}: bypassed nodes cannot be converted; remove or enable it, or export "
                            "the API format from ComfyUI.")
            continue
        if not isinstance(class_type, str) or not object_info.has_node(class_type):
            problems.append(f"{where}: no configured backend knows this node class.")
            continue
        converted = _convert_node(node, nodes, links, object_info, problems, where)
        if converted is not None:
            graph[str(node_id)] = converted
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] not in graph:
                problems.append(f"Node {node_id} ({node['class_type']}) input '{name}': linked to node {value[0]}, "
                                "which was left out (muted or a note).")
    if problems:
        raise GraphRefused(problems)
    if not graph:
        raise GraphRefused(["The saved workflow has no nodes to run."])
    return ImportedGraph(graph, "ui", notes)


def _convert_node(node, nodes, links, object_info, problems, where):
    info = object_info.node(node["type"])
    order = info.get("input_order") or {section: list(info.get("input", {}).get(section) or {})
                                        for section in ("required", "optional")}
    specs = {**(info.get("input", {}).get("required") or {}), **(info.get("input", {}).get("optional") or {})}
    linked = {}
    for slot in node.get("inputs") or []:
        if isinstance(slot, dict) and slot.get("link") is not None:
            source = _resolve(slot["link"], nodes, links)
            if source is None:
                problems.append(f"{where} input '{slot.get('name')}': its link leads nowhere.")
                continue
            linked[slot.get("name")] = source
    values = node.get("widgets_values")
    inputs = {}
    position = 0
    for name in [*order.get("required", []), *order.get("optional", [])]:
        spec = specs.get(name) or []
        kind = spec[0] if spec else None
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
        if name in linked:
            source = linked[name]
            inputs[name] = source["value"] if "value" in source else [str(source["node"]), source["slot"]]
            if is_widget:  # a widget turned into an input still has its place in widgets_values
                position += 1 + (1 if options.get("control_after_generate") else 0)
            continue
        if not is_widget:
            continue  # an unconnected link input (optional, or caught by validation as missing)
        if isinstance(values, dict):
            if name in values:
                inputs[name] = values[name]
            continue
        if not isinstance(values, list) or position >= len(values):
            if name in order.get("required", []):
                problems.append(f"{where} input '{name}': the saved workflow has no value for it.")
            continue
        inputs[name] = values[position]
        position += 1
        if options.get("control_after_generate"):
            position += 1  # "fixed" / "randomize" …: the UI's own setting, not an input
        if any(options.get(key) for key in UPLOAD_OPTIONS) and position < len(values) and values[position] in (
                "image", "video", "audio", None):
            position += 1  # the upload button's placeholder value
    converted = {"class_type": node["type"], "inputs": inputs}
    if isinstance(node.get("title"), str):
        converted["_meta"] = {"title": node["title"][:200]}
    return converted


def _resolve(link_id, nodes, links, depth=0):
    """Where a link really comes from: ``{"node", "slot"}``, or ``{"value"}`` for a PrimitiveNode."""
    if link_id not in links or depth > 50:
        return None
    source_id, slot = links[link_id]
    source = nodes.get(source_id)
    if source is None:
        return None
    if source.get("type") == "Reroute":
        upstream = next((s.get("link") for s in source.get("inputs") or [] if isinstance(s, dict)), None)
        return _resolve(upstream, nodes, links, depth + 1) if upstream is not None else None
    if source.get("type") == "PrimitiveNode":
        values = source.get("widgets_values") or []
        return {"value": values[0]} if values else None
    return {"node": source_id, "slot": slot}
