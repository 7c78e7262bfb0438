"""Sign-up (a few accounts an hour per address), log-in that slows guessing, log-out, password reset, account page,
and the link confirming an email address."""
import math
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import (
    INTERNAL_RESET_SESSION_TOKEN,
    LoginView,
    LogoutView,
    PasswordChangeView,
    PasswordResetCompleteView,
    PasswordResetConfirmView,
    PasswordResetDoneView,
    PasswordResetView,
)
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.db import transaction
from django.middleware.csrf import REASON_NO_CSRF_COOKIE
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse, reverse_lazy
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from accounts import selectors, services
from accounts.backends import client_address
from accounts.forms import (
    AccountDeleteForm,
    AccountEmailForm,
    AccountPasswordChangeForm,
    ApiTokenCreateForm,
    PasswordResetRequestForm,
    PasswordResetSetForm,
    SignupForm,
)
from accounts.mail import duration_words, wait_words
from accounts.login_devices import login_device_cookie_set, login_device_of
from accounts.services import login_attempt_allowed
from accounts.tokens import password_reset_token_generator
from classifier import selectors as classifier_selectors
from mnistsite.form_pages import form_sent_again


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a form refused for its security token, most often one left open while the visitor logged
    out or in from another tab (which changes the token). The reason is for the log, which Django has written, but
    for a browser that sent no cookie at all: sending the form again cannot help until it accepts the site's."""
    return render(request, "403_csrf.html", {"no_cookie": reason == REASON_NO_CSRF_COOKIE}, status=403)


class ThrottledLoginView(LoginView):
    """Django's login view, answering 429 while the lockout (enforced by the backend) is on, and 503 while the cache
    that counts the failures cannot be reached (services.LockoutUnavailable)."""

    redirect_authenticated_user = True

    def get_redirect_url(self) -> str:
        # "next" naming this very page would send a signed-in visitor round in a loop, which Django refuses with a
        # server error: they go to the default page instead.
        url = super().get_redirect_url()
        return "" if url and urlsplit(url).path == self.request.path else url

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = request.POST.get("username", "")
        # Read as the form reads it (spaces around it dropped, NFKC), which is the name the lockout counted: read as
        # sent, "alice " would pass here, be refused by the backend, and tell its owner that the password is wrong.
        counted = self.get_form_class()(request).fields["username"].to_python(username) or ""
        # As the backend counts it: under the account's name as stored.
        account = selectors.user_get_by_name(username=counted)
        counted = account.get_username() if account is not None else counted
        try:
            allowed = login_attempt_allowed(username=counted, ip=client_address(request),
                                            device=login_device_of(request, user=account))
        except services.LockoutUnavailable:
            response = self._refused(username, "Log-in is unavailable for a moment: no password can be checked. "
                                               "Try again in a minute.", status=503)
            response["Retry-After"] = "60"
            return response
        if not allowed:
            return self._refused(username, "Too many failed log-in attempts. Try again in a few minutes.", status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form) -> HttpResponse:
        # The password was checked against the account as read then; deleted since (another tab, staff), signing
        # it in would record the log-in on a row no longer there, a server error. Locked, a deletion waits for the
        # log-in instead (and ends its session with the account).
        try:
            with transaction.atomic():
                services.user_lock(user=form.get_user())
                response = super().form_valid(form)
        except services.AccountGone:
            # As for any name that has no account: that is what it is now.
            form.add_error(None, form.get_invalid_login_error())
            return self.form_invalid(form)
        login_device_cookie_set(response, request=self.request, user=form.get_user())
        return response

    def _refused(self, username: str, refusal: str, *, status: int) -> HttpResponse:
        # An unbound form: a bound one would be validated, which checks the password once more and, even when it is
        # right, adds "enter a correct username and password" to the refusal.
        form = self.get_form_class()(self.request, initial={"username": username})
        return self.render_to_response(self.get_context_data(form=form, refusal=refusal), status=status)


@method_decorator(login_not_required, name="dispatch")
class SiteLogoutView(LogoutView):
    """Django's log-out, which takes only a POST, with a page for a GET: a typed address or an old bookmark gets a
    "Log out" button (a form with its CSRF token), not a 405. A GET itself never logs out: any other site could
    send one."""

    http_method_names = ["get", "head", "post", "options"]

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return render(request, "registration/logout.html")

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        signed_in = request.user.is_authenticated
        response = super().post(request, *args, **kwargs)
        if signed_in:
            # The log-in page it leads to looks the same before and after: say that it worked.
            messages.info(request, "You are logged out.")
        return response


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is closed on this site.")
    next_url = _signup_next(request)
    if request.user.is_authenticated:
        return redirect(next_url or "classifier:upload")
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        # A whole sign-up is spent before the form is even read, and given back but a tenth when it is refused:
        # whether a name is taken must not decide whether an attempt is refused, or refusals would tell.
        retry_after = services.signup_allowance_take(ip=client_address(request), share=1)
        if retry_after is not None:
            context = {
                # What was typed, but the passwords, is there to send again.
                "form": SignupForm(initial={field: request.POST.get(field, "") for field in ("username", "email")}),
                "refusal": f"Too many sign-ups from your address; try again in {wait_words(seconds=retry_after)}.",
                "next": next_url,
            }
            response = render(request, "registration/signup.html", context, status=429)
            response["Retry-After"] = str(math.ceil(retry_after))
            return response
        if form.is_valid():
            try:
                user = services.user_sign_up(username=form.cleaned_data["username"],
                                             email=form.cleaned_data["email"], password=form.cleaned_data["password1"])
            except services.UsernameTaken:
                form.add_error("username", form.instance.unique_error_message(type(form.instance),
                                                                              [form.instance.USERNAME_FIELD]))
            else:
                login(request, user)
                messages.success(request, "Welcome! Upload or draw a digit to get started.")
                _confirmation_messages(request, services.email_confirmation_request(user=user, first=True),
                                       email=user.email)
                return redirect(next_url or "classifier:upload")
        services.signup_allowance_take(ip=client_address(request), share=services.FAILED_SIGNUP_SHARE - 1)
    return render(request, "registration/signup.html", {"form": form, "next": next_url},
                  status=400 if form.errors else 200)


def _signup_next(request: HttpRequest) -> str:
    """The page a visitor sent to log in was on their way to (``next``, which the log-in page passes on to sign-up),
    when it is one of this site's; else "". Sign-up itself is none: it would lead a new account back to its form."""
    url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return ""
    return "" if urlsplit(url).path == request.path else url


def _account_gone(request: HttpRequest) -> HttpResponse:
    """The answer to a change asked for by a tab of an account deleted meanwhile (another tab, staff): its session
    is ended, and the log-in page says why."""
    logout(request)
    messages.error(request, "Your account was deleted meanwhile, from another tab or by an administrator; nothing "
                   "was changed.")
    return redirect("login")


# The key of a token just made, between the answer to the form (a redirect) and the page it leads to; popped there.
NEW_API_TOKEN_SESSION_KEY = "accounts_new_api_token"


def _account_page(
    request: HttpRequest,
    *,
    new_token: dict | None = None,
    token_form: ApiTokenCreateForm | None = None,
    email_form: AccountEmailForm | None = None,
    delete_form: AccountDeleteForm | None = None,
    status: int = 200,
):
    """The account page; ``new_token`` ({"id", "key"}, from the session) is a token just made, shown with its key."""
    tokens = selectors.api_token_list_for_user(user=request.user)
    # Revoked in between: nothing to show.
    made = next((token for token in tokens if new_token and token.pk == new_token["id"]), None)
    context = {
        "storage": classifier_selectors.storage_usage_for_user(user=request.user),
        "tokens": tokens,
        "new_token": (made, new_token["key"]) if made else None,
        "token_form": token_form or ApiTokenCreateForm(user=request.user, request=request),
        "email_form": email_form or AccountEmailForm(user=request.user, request=request,
                                                     initial={"email": request.user.email}),
        "password_reset_available": selectors.password_reset_by_email_available(),
        "email_confirmed": selectors.user_email_confirmed(user=request.user),
        "email_link_refused_at": selectors.email_confirmation_refused_at(user=request.user),
        "confirmation_valid_for": duration_words(seconds=settings.EMAIL_CONFIRMATION_TIMEOUT),
        "delete_form": delete_form or _account_delete_form(request),
    }
    response = render(request, "registration/account.html", context, status=status)
    if made:
        response["Cache-Control"] = "no-store"  # no copy of the key in a cache, nor on the way back in the history
    return response


@require_http_methods(["GET"])
def account(request: HttpRequest) -> HttpResponse:
    # A key just made is shown on the first visit after the redirect and dropped from the session there, so a
    # reload (or any later visit) shows it no more.
    return _account_page(request, new_token=request.session.pop(NEW_API_TOKEN_SESSION_KEY, None))


@require_http_methods(["GET", "HEAD", "POST"])
def account_token_create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return form_sent_again(
            request, page=reverse("account"),
            message="No token was made: type its name and your password again, and create it.",
        )
    form = ApiTokenCreateForm(request.POST, user=request.user, request=request)
    if form.is_valid():
        try:
            token, key = services.api_token_create(
                user=request.user, name=form.cleaned_data["name"], read_only=form.cleaned_data["read_only"]
            )
        except services.ApiTokenError as exc:
            form.add_error("name", str(exc))
        except services.AccountGone:
            return _account_gone(request)
        else:
            # Post/Redirect/Get: answered with the page itself, a reload would send the form again and make a
            # second token (or be refused for its name, losing the key from view). The key waits in the session
            # for that one page, never in a message (a cookie, in some storages).
            request.session[NEW_API_TOKEN_SESSION_KEY] = {"id": token.pk, "key": key}
            # To the key itself: below the page's first screen on a phone, it would be easy to miss.
            response = redirect(f"{reverse('account')}#new-token-message")
            response["Cache-Control"] = "no-store"
            return response
    return _account_page(request, token_form=form, status=400)


# Said of a token no longer among the account's, by its Revoke button sent again from a page left open.
TOKEN_REVOKED_ALREADY = "That token was revoked already, perhaps from another tab: it is no longer among your tokens."


@require_http_methods(["GET", "HEAD", "POST"])
def account_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    if request.method != "POST":
        # Never a revocation: a GET changes nothing. A token no longer listed is said to be gone, as its button says.
        token = next((token for token in selectors.api_token_list_for_user(user=request.user) if token.pk == token_id),
                     None)
        return form_sent_again(request, page=reverse("account"), message=TOKEN_REVOKED_ALREADY if token is None else (
            f"The token “{token.name}” was not revoked: press its Revoke button again to revoke it."))
    try:
        revoked = services.api_token_revoke(user=request.user, token_id=token_id)
    except services.AccountGone:
        return _account_gone(request)
    if revoked:
        messages.success(request, "The token was revoked; requests with it are refused from now on.")
    else:
        # A page left open in another tab: a silent reload would leave its reader wondering whether it worked.
        messages.info(request, TOKEN_REVOKED_ALREADY)
    return redirect("account")


def _confirmation_messages(request: HttpRequest, request_outcome: services.EmailConfirmationRequest, *,
                           email: str, saved: bool = True) -> None:
    """Say what became of the link confirming ``email``, the account's address, just ``saved`` (else asked for
    again)."""
    link, valid_for = request_outcome.link, duration_words(seconds=settings.EMAIL_CONFIRMATION_TIMEOUT)
    if link is services.ConfirmationLink.QUEUED:
        # The longest wait, whether it goes now or waits for its address's allowance: said alike, the answer tells
        # nobody whether another account had links sent to the address lately. "Usually": more than a message's
        # accounts waiting on one address, or a mail server refusing for now, take longer.
        minutes = selectors.email_confirmation_delay_minutes()
        messages.success(request, f"A link to confirm {email} is on its way to it; it usually arrives within "
                         f"{minutes} minute{pluralize(minutes)}. Password reset links go there once you open that "
                         f"link, which works for {valid_for}.")
    elif link is services.ConfirmationLink.THROTTLED and saved:
        messages.warning(request, f"Your address {email} was saved, but waits for confirmation: "
                         f"{request_outcome.refusal}")
    elif link is services.ConfirmationLink.THROTTLED:
        messages.warning(request, f"No link was sent. {request_outcome.refusal} A link already sent still works "
                         "until it expires.")
    elif link is services.ConfirmationLink.NO_MAIL:
        messages.success(request, f"Your address {email} was saved; this site sends no email at present, so no reset "
                         "link can reach it: ask an administrator should you forget your password.")


@require_http_methods(["GET", "HEAD", "POST"])
def account_email_change(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return form_sent_again(
            request, page=reverse("account"),
            message="Your email address was not changed: type it and your password again, and save it.",
        )
    form = AccountEmailForm(request.POST, user=request.user, request=request)
    if not form.is_valid():
        return _account_page(request, email_form=form, status=400)
    try:
        result = services.user_email_set(user=request.user, email=form.cleaned_data["email"])
    except services.AccountGone:
        return _account_gone(request)
    if not request.user.email and not result.changed:
        messages.info(request, "Your account has no email address; nothing was changed.")
    elif not request.user.email:
        messages.success(request, "Your email address was removed; an administrator resets a forgotten password.")
    elif result.confirmation.link is services.ConfirmationLink.NOT_NEEDED:
        messages.success(request, f"Password reset links go to {request.user.email}, which is confirmed.")
    _confirmation_messages(request, result.confirmation, email=request.user.email)
    if result.notice_to:
        # Owed in the database, it goes whatever became of its task (accounts.services.email_change_notices_requeue).
        messages.info(request, "A notice is on its way to the address you removed." if not request.user.email
                      else "A notice that the address changed is on its way to your previous address.")
    return redirect("account")


@require_http_methods(["GET", "HEAD", "POST"])
def account_email_confirmation_send(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        # Never a link sent: a GET changes nothing. The button is offered as the account page offers it.
        offered = (bool(request.user.email) and not selectors.user_email_confirmed(user=request.user)
                   and selectors.password_reset_by_email_available())
        return form_sent_again(
            request, page=reverse("account"),
            message="No link was sent: press “Send the link again” to send one." if offered else None,
        )
    try:
        outcome = services.email_confirmation_request(user=request.user, first=False)
    except services.AccountGone:
        return _account_gone(request)
    if outcome.link is services.ConfirmationLink.NOT_NEEDED:
        messages.info(request, "Your email address is confirmed already." if request.user.email
                      else "Your account has no email address to confirm.")
    else:
        _confirmation_messages(request, outcome, email=request.user.email, saved=False)
    return redirect("account")


@login_not_required
@require_http_methods(["GET", "POST"])
def email_confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The link mailed to a new address: a page with a button that confirms it (a GET changes nothing, so mail
    scanners that open links confirm nothing), working whether or not its reader is signed in, and there."""
    try:
        if request.method == "POST":
            services.email_confirm(token=token)
            return redirect(request.path)  # a reload then repeats nothing
        account = services.email_confirmation_user_get(token=token)
    except services.EmailConfirmedAlready:
        # Nothing about the account: whoever holds the link (a forwarded mail, a shared computer) learns no more.
        return render(request, "registration/email_confirm.html", {"confirmed": True})
    except services.EmailConfirmationError as exc:
        return render(request, "registration/email_confirm.html", {"refusal": exc.reason}, status=400)
    context = {"account": account,
               "signed_in_as_another": request.user.is_authenticated and request.user.pk != account.pk}
    return render(request, "registration/email_confirm.html", context)


def _account_delete_form(request: HttpRequest, data=None) -> AccountDeleteForm:
    uploads = classifier_selectors.upload_count_for_user(user=request.user)
    return AccountDeleteForm(data, user=request.user, request=request, uploads=uploads)


@require_http_methods(["GET", "HEAD", "POST"])
def account_delete(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        # A staff account is not deleted from this page (services.account_delete): nothing to send again.
        staff = request.user.is_staff or request.user.is_superuser
        return form_sent_again(request, page=reverse("account"), message=None if staff else (
            "Nothing was deleted: type your password and tick the box again to delete your account."))
    form = _account_delete_form(request, request.POST)
    if not form.is_valid():
        return _account_page(request, delete_form=form, status=400)
    user = request.user
    try:
        services.account_delete(user=user)
    except services.AccountDeleteError as exc:
        form.add_error(None, str(exc))
        return _account_page(request, delete_form=form, status=400)
    logout(request)
    messages.success(request, "Your account, your images and their predictions were deleted.")
    return redirect("login")


class AccountPasswordChangeView(PasswordChangeView):
    """Django's password change (which keeps this session signed in), back to the account page."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("account")
    form_class = AccountPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form):
        try:
            # The form writes the password alone, on the account as it is (PasswordSavedWithTokensMixin).
            response = super().form_valid(form)
        except services.AccountGone:
            return _account_gone(self.request)
        revoked = len(form.api_tokens_revoked)
        messages.success(self.request, "Your password was changed." + (
            f" Your {revoked} API token{pluralize(revoked)} {pluralize(revoked, 'was,were')} revoked." if revoked else ""
        ))
        return response


class PasswordResetContextMixin:
    """What every reset page says: whether this site sends email, and how long a link works."""

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "email_available": selectors.password_reset_by_email_available(),
            "link_valid_for": duration_words(seconds=settings.PASSWORD_RESET_TIMEOUT),
        }


class SitePasswordResetView(PasswordResetContextMixin, PasswordResetView):
    """Django's reset request page, with the mail sent by a worker: the same answer, and the same work, whether or
    not an account has the address, counted against the client's address and the email address (see
    services.password_reset_allowance_take). A site that sends no email says so, and to ask an administrator,
    instead of a form that would send nothing."""

    template_name = "registration/password_reset_form.html"
    form_class = PasswordResetRequestForm
    success_url = reverse_lazy("password_reset_done")

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not selectors.password_reset_by_email_available():
            return self.render_to_response(self.get_context_data(form=None), status=503)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form) -> HttpResponse:
        return self.render_to_response(self.get_context_data(form=form), status=400)

    def form_valid(self, form) -> HttpResponse:
        try:
            services.password_reset_allowance_take(ip=client_address(self.request), email=form.cleaned_data["email"])
        except services.PasswordResetThrottled as exc:
            response = self.render_to_response(self.get_context_data(form=form, refusal=str(exc)), status=429)
            response["Retry-After"] = str(math.ceil(exc.retry_after))
            return response
        # Whoever has the address is looked up by the worker, not here: a lookup, or a mail server's delay, only for
        # addresses that have an account would tell which do.
        email, queued = form.cleaned_data["email"], []
        transaction.on_commit(lambda: queued.append(services.password_reset_email_publish(email=email)))
        # Without ATOMIC_REQUESTS the broker is tried at once, and an outage answered alike for every address, which
        # tells nothing: the page then says that nothing was sent, and the request costs no allowance.
        if queued == [False]:
            services.password_reset_allowance_give_back(ip=client_address(self.request), email=email)
            refusal = "The request could not be taken now, so nothing was sent; please try again in a moment."
            return self.render_to_response(self.get_context_data(form=form, refusal=refusal), status=503)
        return HttpResponseRedirect(self.get_success_url())


class SitePasswordResetDoneView(PasswordResetContextMixin, PasswordResetDoneView):
    template_name = "registration/password_reset_done.html"


class SitePasswordResetConfirmView(PasswordResetContextMixin, PasswordResetConfirmView):
    """The link from the email: Django's check (the token covers the password and the address, so it works once and
    not after either changed) and form. Setting the password ends every session signed in with the old one, and
    revokes the account's API tokens unless unticked."""

    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")
    form_class = PasswordResetSetForm
    token_generator = password_reset_token_generator

    def form_invalid(self, form) -> HttpResponse:
        return self.render_to_response(self.get_context_data(form=form), status=400)

    def form_valid(self, form) -> HttpResponse:
        # The link's check and the save (PasswordSavedWithTokensMixin) under one lock of the account.
        with transaction.atomic():
            # The link was checked when the form arrived, as the account read then. Checked again as it is under the
            # lock, so that of two forms sent with one link at once (two tabs, two devices), the second finds the
            # password changed and the link used; and an account deleted meanwhile is not inserted back.
            try:
                locked = services.user_lock(user=form.user)
            except services.AccountGone:
                locked = None
            if locked is None or not self.token_generator.check_token(
                    locked, self.request.session.get(INTERNAL_RESET_SESSION_TOKEN)):
                self.validlink = False
                return self.render_to_response(self.get_context_data())
            response = super().form_valid(form)
        revoked = len(form.api_tokens_revoked)
        # Locked out by guessing at the password just replaced, its owner could not log in with the new one yet.
        services.login_failures_forget(username=form.user.get_username(), ip=client_address(self.request))
        if revoked:
            messages.success(self.request, f"Your {revoked} API token{pluralize(revoked)} "
                             f"{pluralize(revoked, 'was,were')} revoked with the old password: programs that used "
                             f"{pluralize(revoked, 'it need a new one,them need new ones')} from your Account page.")
        return response


class SitePasswordResetCompleteView(PasswordResetContextMixin, PasswordResetCompleteView):
    template_name = "registration/password_reset_complete.html"
