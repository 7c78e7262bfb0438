"""The embedded broker: Kombu's filesystem transport on local folders, for a laptop where no Redis answers."""
from pathlib import Path


def filesystem_transport_options(root: Path) -> dict:
    """Transport options for ``filesystem://`` under ``root``; creates the folders the transport expects."""
    folders = {name: root / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        # One folder in and out: publishers and workers on this machine share the same queue files.
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
    }
