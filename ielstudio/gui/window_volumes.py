"""Volume data sets in the main window: one queue row per volume, its slices through the
slice bar (PageUp/PageDown, Shift+wheel), decisions per slice or per volume, objects
taken whole in 3-D, thumbnails of each volume's worst slice, and export as label volumes.

The unit of review stays the slice (`core.volume_review`: one project row per slice,
named ``case/0012``), so accept, keep, brush, eraser and undo work on a slice as on an
image, and a stroke's undo step is the one slice it changed; a volume-wide decision is
one undo step over its slices.
"""

from __future__ import annotations

from .queue_model import STATUS_TITLES
from .workers import GeneratorWorker

#: The actions that only mean something for a volume data set.
VOLUME_ACTIONS = ("next_slice", "previous_slice", "accept_volume", "keep_volume")


#: project setting: the contrast a volume data set was last reviewed in
CONTRAST_SETTING = "volume_contrast"


class VolumeMixin:
    """The volume side of the review session (`self.volumes` is None for 2-D data)."""

    def _open_volumes(self, scan) -> None:
        """Set the window up for ``scan`` (a `VolumeScan`, a 2-D scan, or None when closing)."""
        from ielstudio.core.volume_review import VolumeScan, VolumeSlices

        volumes = isinstance(scan, VolumeScan)
        self.volumes = VolumeSlices(scan) if volumes else None
        self._thumb_volumes = VolumeSlices(scan, keep=1) if volumes else None  # read in the thumbnail thread only
        self._slice_at: dict[str, str] = {}  # volume -> the slice the user moved to there last
        self._waiting_for = self._read_now = None
        self._cross_at: dict[str, tuple[int, int]] = {}  # volume -> the (row, col) its other planes pass through
        self.ortho_views.clear()
        self.side_tabs.setTabVisible(self.side_tabs.indexOf(self.ortho_views), volumes)
        self.side_tabs.tabBar().setVisible(volumes)
        self.side_tabs.setCurrentWidget(self.ortho_views if volumes else self.iel_scroll)
        self.canvas.set_cross(None)
        self.slice_bar.setVisible(volumes)
        self.canvas.slice_wheel = volumes
        controls = self.canvas.view_controls
        saved = self.project.get_setting(CONTRAST_SETTING) if volumes and self.project is not None else None
        self._restoring_contrast = True
        try:
            controls.set_raw(volumes)
            if isinstance(saved, dict) and controls.mode.findData(saved.get("mode")) >= 0:
                if saved["mode"] == "manual":
                    controls.window.setValue(float(saved.get("window", controls.window.value())))
                    controls.level.setValue(float(saved.get("level", controls.level.value())))
                controls.set_mode(saved["mode"])
        finally:
            self._restoring_contrast = False
        if not getattr(self, "_contrast_hooked", False):
            self._contrast_hooked = True
            controls.mode.currentIndexChanged.connect(lambda _: self._remember_contrast())
            controls.window.editingFinished.connect(self._remember_contrast)
            controls.level.editingFinished.connect(self._remember_contrast)
        for key in VOLUME_ACTIONS:
            self.actions[key].setEnabled(volumes)

    def _remember_contrast(self) -> None:
        """A volume project keeps its contrast (a CT preset, or a window and level in the
        scan's units), so it reopens in the lung window it was reviewed in."""
        if self.volumes is None or self.project is None or self.project.read_only or self._restoring_contrast:
            return
        controls = self.canvas.view_controls
        self.project.set_setting(CONTRAST_SETTING, {"mode": controls.mode.currentData(),
                                                    "window": controls.window.value(),
                                                    "level": controls.level.value()})

    def resolve_slice(self, name: str) -> str:
        """What to show for a queue row: the slice of a volume the user moved to last there,
        else its worst unreviewed slice (the middle one before scoring); any other name as
        it is."""
        members = self.queue.model.members(name) if self.volumes is not None else []
        if not members:
            return name
        if name in self._slice_at:
            return self._slice_at[name]
        from ielstudio.core.volume_review import next_slice_to_review

        rows = {n: self.queue.model.get(n) for n in members}
        if all(r.score is None for r in rows.values()):
            return members[len(members) // 2]
        scores = {n: r.score for n, r in rows.items()}
        worst = next_slice_to_review(members, {n: r.status for n, r in rows.items()}, scores)
        return worst or min(members, key=lambda n: (scores[n] is None, scores[n] or 0.0))

    def show_slice(self, name: str) -> None:
        """Show slice ``name`` (its volume's row selected in the queue)."""
        volume = self.queue.model.group_of(name)
        if volume is None:
            return
        self._slice_at[volume] = name
        if self.queue.current_name() != volume and self.queue.select(volume):
            return  # selecting the row showed it
        self.show_image(name)

    def go_to(self, name: str) -> None:
        """Show ``name``: a slice of a volume, or a queue row."""
        if self.volumes is not None and self.queue.model.group_of(name) is not None:
            self.show_slice(name)
        else:
            self.queue.select(name)

    def step_slice(self, delta: int) -> None:
        """Move ``delta`` slices through the shown volume (PageUp/PageDown, Shift+wheel)."""
        found = self.scan.locate(self.current) if self.volumes is not None and self.current else None
        if found is None:
            return
        entry, k = found
        target = min(entry.n_slices - 1, max(0, k + delta))
        if target != k:
            self.show_slice(entry.slice_name(target))

    def _slice_bar_moved(self, index: int) -> None:
        found = self.scan.locate(self.current) if self.volumes is not None and self.current else None
        if found is not None and index != found[1]:
            self.show_slice(found[0].slice_name(index))

    def _update_slice_bar(self, name: str) -> None:
        found = self.scan.locate(name) if self.volumes is not None else None
        if found is None:
            return
        entry, k = found
        row = self.queue.model.get(name)
        status = STATUS_TITLES.get(row.status, row.status) if row is not None else "unreviewed"
        self.slice_bar.show_slice(k, entry.n_slices, entry.orientation.view, None if row is None else row.score,
                                  status)

    def same_volume(self, a: str, b: str) -> bool:
        """Whether slices ``a`` and ``b`` are of one volume (False for 2-D images)."""
        if self.volumes is None:
            return False
        va, vb = self.queue.model.group_of(a), self.queue.model.group_of(b)
        return va is not None and va == vb

    def show_other_planes(self, name: str) -> None:
        """Show the two other planes of slice ``name``'s volume through its cross (the
        centre of the slice until a pan-tool click or a click in a plane moves it), with
        the labels as decided so far; read and put together in the worker of `OrthoViews`."""
        found = self.scan.locate(name) if self.volumes is not None and self.project is not None else None
        if found is None:
            return
        from ielstudio.core.ortho_planes import display_point, ortho_planes, voxel_at

        entry, k = found
        if entry.name in self._cross_at:
            voxel = voxel_at(entry.shape, entry.axis, k, entry.orientation, *self._cross_at[entry.name])
        else:
            voxel = tuple(k if a == entry.axis else n // 2 for a, n in enumerate(entry.shape))
        volumes, project, encoding = self.volumes, self.project, self.project.mask_encoding()

        def decided(n: str):
            d = project.decision(n)
            return project.mask(d.mask_id) if d.mask_id is not None else None

        self.canvas.set_cross(display_point(entry.shape, entry.axis, entry.orientation, voxel))
        self.ortho_views.set_levels(*self.canvas.view_controls.levels())
        self.ortho_views.request(lambda: ortho_planes(lambda v, a, i: volumes.cross_section(v, a, i, encoding),
                                                      entry, voxel, decided))

    def move_cross(self, row: int, col: int) -> None:
        """A pan-tool click on the slice: the other planes pass through (row, col) now."""
        volume = self.queue.model.group_of(self.current) if self.volumes is not None and self.current else None
        if volume is not None:
            self._cross_at[volume] = (int(row), int(col))
            self.show_other_planes(self.current)

    def go_to_voxel(self, voxel) -> None:
        """A click in one of the other planes: review the slice through that voxel, the
        cross on it."""
        found = self.scan.locate(self.current) if self.volumes is not None and self.current else None
        if found is None:
            return
        from ielstudio.core.ortho_planes import display_point

        entry = found[0]
        self._cross_at[entry.name] = display_point(entry.shape, entry.axis, entry.orientation, voxel)
        target = entry.slice_name(int(voxel[entry.axis]))
        if target == self.current:
            self.show_other_planes(target)
        else:
            self.show_slice(target)

    def _advance(self, name: str) -> None:
        """After a decision on ``name``: in a volume, its next slice to review (worst
        first), then the next volume; else the next image."""
        volume = self.queue.model.group_of(name) if self.volumes is not None else None
        if volume is None:
            self.step_image(1)
            return
        from ielstudio.core.volume_review import next_slice_to_review

        members = self.queue.model.members(volume)
        rows = {n: self.queue.model.get(n) for n in members}
        following = next_slice_to_review(members, {n: r.status for n, r in rows.items()},
                                         {n: r.score for n, r in rows.items()}, current=name)
        if following is not None:
            self.show_slice(following)
        else:
            self.step_image(1)

    def _volume_of_current(self) -> str | None:
        name = self._need_current()
        if name is None or self.volumes is None:
            return None
        return self.queue.model.group_of(name)

    def decide_volume(self, status: str) -> int:
        """Accept (the proposals of) or keep (the given labels of) every unreviewed slice
        of the shown volume, as one undo step, then go on to the next volume. Slices
        already decided keep their decision. The slices' proposals are read and encoded
        in a worker (`plan_in_background`) and recorded when it ends; the count asked for."""
        from ielstudio.core.session import plan_decisions

        volume = self._volume_of_current()
        if volume is None:
            return 0
        names = [n for n in self.queue.model.members(volume) if self.queue.model.get(n).status == "unreviewed"]
        if not names:
            self.statusBar().showMessage(f"Every slice of {volume} is decided already.", 5000)
            return 0
        verb = "Accept proposals" if status == "accepted" else "Keep original"

        def record(planned) -> None:
            plans, missing = planned
            if missing:
                self.statusBar().showMessage(f"{len(missing)} slices of {volume} have no proposal yet: train a model "
                                             "first (Ctrl+T).", 6000)
                return
            if self.record_plans(plans, f"{verb} for {len(plans)} slices of {volume}") is not None:
                self.statusBar().showMessage(f"{verb} for {len(plans)} slices of {volume} (one undo step).", 6000)
                self.step_image(1)

        what = f"{'accepting' if status == 'accepted' else 'keeping'} {len(names)} slices of {volume}"
        started = self.plan_in_background(what, plan_decisions, self.project, names, status, self.proposals.reader(),
                                          then=record)
        return len(names) if started is not None else 0

    def accept_object_3d(self, name: str, row: int, col: int) -> GeneratorWorker | None:
        """Take the proposal for the whole 3-D object under (row, col) of slice ``name``:
        the 26-connected object of foreground in the decided or proposed labels, on every
        slice it spans, as one undo step.

        The slices are read, the object found and its new masks encoded in a worker
        (`volume_review.plan_object_take`: a 48-slice object of a 512 px volume takes about
        300 ms), recorded in one transaction when it ends (`plan_in_background`); a slice
        decided otherwise meanwhile makes it record nothing and say so. The worker, or None."""
        from ielstudio.core.volume_review import plan_object_take

        entry, k = self.scan.locate(name)
        volumes, encoding = self.volumes, self.project.mask_encoding()

        def record(take) -> None:
            if not take.plans:
                self.statusBar().showMessage("The proposal does not change anything there.", 4000)
            elif self.record_plans(take.plans, f"Accept object on {take.volume} ({take.span})") is not None:
                self.statusBar().showMessage(f"Took the proposal for the object on {take.span} of {take.volume} "
                                             f"({len(take.plans)} slices changed; one undo step).", 6000)

        return self.plan_in_background(f"taking the object on {entry.name}", plan_object_take, self.project, entry, k,
                                       row, col, lambda n: volumes.sample(n, encoding).mask, self.proposals.reader(),
                                       then=record)

    def _request_volume_thumbnail(self, volume: str) -> None:
        """A volume's thumbnail is its worst slice (its middle one before scoring)."""
        members = self.queue.model.members(volume)
        scored = [n for n in members if self.queue.model.get(n).score is not None]
        name = min(scored, key=lambda n: self.queue.model.get(n).score) if scored else members[len(members) // 2]
        reader = self._thumb_volumes
        self.thumb_queue.put((volume, lambda: reader.thumbnail_source(name)))

    def _open_before_showing(self, name: str) -> bool:
        """A slice of a volume that would be slow to read now (`VolumeSlices.ready`: a large
        compressed file not yet open): open the volume in the background, show nothing and
        say so meanwhile, and show ``name`` once it is open (`_show_when_open`). True then."""
        found = self.scan.locate(name) if self.volumes is not None and name not in self._samples else None
        read_now, self._read_now = self._read_now, None
        if found is None or found[0].name == read_now or self.volumes.ready(found[0].name):
            self._waiting_for = None
            return False
        volume = found[0].name
        self._waiting_for, self.current = name, None
        self.canvas.set_image(None)
        self.iel_panel.clear()
        self._update_status()
        self.statusBar().showMessage(f"Reading {volume} ({found[0].image_path.name}); its slices show when it is read",
                                     0)
        self._start_prefetching()
        self._open_volumes_ahead([volume])
        return True

    def _show_when_open(self, volume: str) -> None:
        """The background open of ``volume`` ended: show the slice waiting for it (after a
        failed open it is read here once more, and reported as an unreadable file is)."""
        found = self.scan.locate(self._waiting_for)
        if found is not None and found[0].name == volume:
            name, self._waiting_for = self._waiting_for, None
            self._read_now = None if self.volumes.ready(volume) else volume
            self.statusBar().clearMessage()
            self.show_image(name)

    def _open_volumes_ahead(self, volumes: list[str]) -> None:
        """Open these volumes (the queue's next and previous) in the prefetch thread."""
        reader = self.volumes
        for v in volumes:
            if self.queue.model.members(v) and v not in self._prefetching:
                self._prefetching.add(v)
                self.prefetch_queue.put((v, lambda v=v: reader.open(v), None, self._prefetch_gen))

    def export_volumes(self, out) -> GeneratorWorker:
        from ielstudio.core.volume_review import iter_volume_export

        from . import jobs

        scores = self.project.get_setting(jobs.VOLUME_SCORES) or {}
        return GeneratorWorker(iter_volume_export, self.project, self.scan, out, scores, cancel_kwarg="cancel",
                               parent=self)
