"""Live streams: ``vivit-deploy stream`` follows RTSP/HTTP/UDP/TCP sources, devices and files in real time.

Rooms: ``sources`` (what a source is and opening it), ``windows`` (which frames the next windows need, in
a bounded buffer), ``reader`` (a thread per stream: decode, window, reconnect), ``classifier``
(``StreamClassifier``: windows of every stream batched through one runtime, records and events out).
The timeline of a file (``vivit-deploy classify --window``) is the corpus job's (``vivit_deploy.pipeline``).
"""

from vivit_deploy.streaming.classifier import StreamClassifier, format_summary, label_change_line
from vivit_deploy.streaming.sources import Source, SourceError, parse_source
from vivit_deploy.streaming.windows import WindowSpec

__all__ = ["Source", "SourceError", "StreamClassifier", "WindowSpec", "format_summary", "label_change_line",
           "parse_source"]
