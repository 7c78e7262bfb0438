"""The tutorial's Flask app, re-implemented faithfully as the serving baseline for `make bench-serve`.

Synchronous and in-process: no database, no authentication, no queue. It loads the 784-500-10 MLP from a
plain state dict, converts the upload to grayscale, resizes it to 28x28 and answers with the arg-max,
exactly as the tutorial did. Run: `python benchmarks/tutorial_flask_app.py STATE_DICT PORT`.
"""
import io
import sys

import torch
import torchvision.transforms as transforms
from flask import Flask, redirect, render_template_string, request
from PIL import Image
from torch import nn

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NeuralNet(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.l2 = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        return self.l2(self.relu(self.l1(x)))


model = NeuralNet(784, 500, 10).to(device)
app = Flask(__name__)

UPLOAD_PAGE = "<form method=post enctype=multipart/form-data><input type=file name=file><input type=submit></form>"
RESULT_PAGE = "<p>Result: {{ result }}</p>"
transform = transforms.Compose(
    [
        transforms.Grayscale(num_output_channels=1),
        transforms.Resize((28, 28)),
        transforms.ToTensor(),
        transforms.Lambda(lambda x: torch.flatten(x)),
    ]
)


def allowed_file(filename: str) -> bool:
    return "." in filename and filename.rsplit(".", 1)[1].lower() in {"png", "jpg", "jpeg", "gif"}


def predict(image: Image.Image) -> str:
    tensor = transform(image).unsqueeze(0).to(device)
    output = model(tensor)
    _, predicted = torch.max(output.data, 1)
    return str(predicted.item())


@app.route("/", methods=["GET", "POST"])
def upload_file():
    if request.method == "POST":
        if "file" not in request.files:
            return redirect(request.url)
        file = request.files["file"]
        if file.filename == "":
            return redirect(request.url)
        if file and allowed_file(file.filename):
            image = Image.open(io.BytesIO(file.read()))
            return render_template_string(RESULT_PAGE, result=predict(image))
    return render_template_string(UPLOAD_PAGE)


if __name__ == "__main__":
    model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    model.eval()
    app.run(host="127.0.0.1", port=int(sys.argv[2]))
