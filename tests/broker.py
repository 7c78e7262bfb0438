"""Reading what the code under test published to the real broker, without a worker consuming it."""


class BrokerQueue:
    """One of the real broker's queues, emptied for a test: the task messages the code under test sent to it."""

    def __init__(self, app, name: str):
        self.app, self.name = app, name

    def purge(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(self.name)

    def messages(self) -> list[dict]:
        """Take every waiting message off the queue, oldest first: task name, id, args, kwargs and eta (None: to run
        at once) of each."""
        taken = []
        with self.app.connection_for_read() as conn, conn.SimpleQueue(self.name, no_ack=True) as queue:
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    return taken
                args, kwargs, _embed = message.decode()
                taken.append({"task": message.headers["task"], "id": message.headers["id"], "args": args,
                              "kwargs": kwargs, "eta": message.headers.get("eta")})

    def prediction_ids(self) -> list[int]:
        """The prediction ids carried by the inference messages taken off the queue, in publishing order."""
        ids: list[int] = []
        for message in self.messages():
            assert message["task"] == "classifier.tasks.predictions_execute", message
            ids += message["args"][0]
        return ids
